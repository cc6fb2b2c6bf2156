"""ArcFace IR-SE50, the face-recognition network of XVerse's ID-Sim (`model_ir_se50.pth`).

Written from the published architecture (InsightFace_Pytorch / pSp `Backbone(50, 0.6, "ir_se")`):
the module and parameter names are those of the published checkpoint, so its state dict loads
with `strict=True`. Input: a 112x112 RGB face scaled to [-1, 1]; output: an L2-normalised
512-d embedding. Weights come from a user path, read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# (in channels, depth, units) of the four stages of the 50-layer network; each stage's first unit strides 2
STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))


class Flatten(nn.Module):
    def forward(self, x):
        return x.reshape(x.size(0), -1)


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIRSE(nn.Module):
    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel), nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth), SEModule(depth, 16))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    def __init__(self, drop_ratio: float = 0.6):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        self.body = nn.Sequential(*[BottleneckIRSE(cin if u == 0 else depth, depth, 2 if u == 0 else 1)
                                    for cin, depth, units in STAGES for u in range(units)])
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(drop_ratio), Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

    def forward(self, x):
        x = self.output_layer(self.body(self.input_layer(x)))
        return x / x.norm(2, dim=1, keepdim=True)


def load_state_dict(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """A plain tensor state dict from `path`, through `torch.load(weights_only=True)` (never unpickling code)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key}: {path} not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError names the global the file would need
        raise ValueError(f"{key}: {path} cannot be read with torch.load(weights_only=True) (it needs more than "
                         f"tensors: {type(e).__name__}: {str(e).splitlines()[0]}); save its state_dict() "
                         "alone") from None
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{key}: {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_irse50(path: str | Path, key: str = "id_sim.weights") -> IRSE50:
    """IR-SE50 in eval mode with the checkpoint at `path`; a mismatch names the file and the keys."""
    net = IRSE50()
    sd = load_state_dict(path, key)
    missing, unexpected = (sorted(set(a) - set(b)) for a, b in ((net.state_dict(), sd), (sd, net.state_dict())))
    if missing or unexpected:
        raise ValueError(f"{key}: {path} is not an IR-SE50 checkpoint (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, {len(missing)}/{len(unexpected)} in all)")
    net.load_state_dict(sd)
    return net.eval()
