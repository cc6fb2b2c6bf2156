"""The tiny-world DINO: its ViT, its self-distillation loop, and its `local-dir:` folder.

Why it exists: no pretrained DINO weights exist offline, so the tiny profile trains its own timm
`VisionTransformer` (the model `metrics.dino` loads) on train-split identities, without labels:
student and EMA teacher, centring, sharpened teacher, 2 global and 4 local crops. One deviation
from DINO's recipe, recorded here: the two global crops come from two renderings of one subject
(its reference and a single-subject scene, `world.rendering_pairs`) rather than from one photo,
because the synthetic world can render a subject twice; with single-image crops the 2-core
budget did not reach a useful model.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..dino import CONFIG_FILE, IMAGENET_MEAN, IMAGENET_STD, WEIGHTS_FILE, build_vit

DINO_MODEL = "vit_tiny_patch16_224"
DINO_KWARGS: dict[str, Any] = {"img_size": 48, "patch_size": 8, "embed_dim": 96, "depth": 3, "num_heads": 3,
                               "dynamic_img_size": True}
DINO_PREPROCESS = {"resize": 48, "crop": 48, "interpolation": "bicubic", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def new_vit(seed: int = 0):
    """The tiny ViT, freshly initialised from `seed`."""
    torch.manual_seed(seed)
    return build_vit(DINO_MODEL, DINO_KWARGS)


def save_dino(net, folder: str | os.PathLike, model: str = DINO_MODEL, model_kwargs: dict[str, Any] | None = None,
              preprocess: dict[str, Any] | None = None) -> Path:
    """A `local-dir:` folder `metrics.dino` loads: dino_config.json + model.safetensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model": model, "model_kwargs": model_kwargs or DINO_KWARGS, "preprocess": preprocess or DINO_PREPROCESS}
    (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / WEIGHTS_FILE))
    return folder


class DinoHead(torch.nn.Module):
    """DINO's projection head: an MLP to a bottleneck, L2-normalised, then a weight-normed linear layer."""

    def __init__(self, dim: int, out_dim: int = 1024, hidden: int = 256, bottleneck: int = 64):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden),
                                       torch.nn.GELU(), torch.nn.Linear(hidden, bottleneck))
        self.last = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(bottleneck, out_dim, bias=False))

    def forward(self, x):
        return self.last(F.normalize(self.mlp(x), dim=-1))


def _to_tensor(images: list[np.ndarray], size: int, mean, std) -> torch.Tensor:
    """uint8 images -> [N, 3, size, size] normalised (bicubic, as the eval transforms)."""
    x = [F.interpolate(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255, size=(size, size),
                       mode="bicubic", align_corners=False, antialias=True)[0] for a in images]
    x = torch.stack(x).clamp(0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _random_crops(x: torch.Tensor, size: int, scale: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """A random resized crop (aspect 3/4..4/3) of each image, plus a random horizontal flip."""
    n, _, h, w = x.shape
    out = []
    for i in range(n):
        area = h * w * float(torch.empty(1).uniform_(*scale, generator=gen))
        ratio = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)))
        ch, cw = min(h, round(math.sqrt(area / ratio))), min(w, round(math.sqrt(area * ratio)))
        y0 = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        crop = F.interpolate(x[i:i + 1, :, y0:y0 + ch, x0:x0 + cw], size=(size, size), mode="bilinear",
                             align_corners=False, antialias=True)
        out.append(crop.flip(-1) if torch.rand(1, generator=gen) < 0.5 else crop)
    return torch.cat(out)


@dataclass(frozen=True)
class DinoTrainingConfig:
    """The tiny DINO's training recipe (defaults: the tiny profile's): batch size and learning rate,
    `n_local` small crops per sample for the student, the student's and the teacher's softmax
    temperatures, and the momenta of the teacher's centre and of its EMA of the student."""

    batch: int = 64
    lr: float = 5e-4
    n_local: int = 4
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    ema: float = 0.99


def _dino_views(first: torch.Tensor, second: torch.Tensor, idx: torch.Tensor, n_local: int,
                gen: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The batch `idx`'s two global crops (one per rendering) and `n_local` local crops (alternating renderings)."""
    size = DINO_KWARGS["img_size"]
    globals_ = [_random_crops(first[idx], size, (0.4, 1.0), gen), _random_crops(second[idx], size, (0.4, 1.0), gen)]
    locals_ = [_random_crops((first, second)[j % 2][idx], size // 2, (0.1, 0.4), gen) for j in range(n_local)]
    return globals_, locals_


def _dino_step(student, teacher, opt: torch.optim.Optimizer, views: tuple[list[torch.Tensor], list[torch.Tensor]],
               center: torch.Tensor, training: DinoTrainingConfig) -> torch.Tensor:
    """One self-distillation step: the student's update, the teacher's EMA and the centre's update; returns the loss."""
    globals_, locals_ = views
    with torch.no_grad():
        t_out = [teacher(g) for g in globals_]
        t_prob = [F.softmax((t - center) / training.teacher_temp, dim=-1) for t in t_out]
    s_logp = [F.log_softmax(student(v) / training.student_temp, dim=-1) for v in globals_ + locals_]
    terms = [-(tp * sp).sum(-1).mean() for ti, tp in enumerate(t_prob) for si, sp in enumerate(s_logp) if si != ti]
    loss = torch.stack(terms).mean()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
    opt.step()
    with torch.no_grad():
        for ps, pt in zip(student.parameters(), teacher.parameters()):
            pt.mul_(training.ema).add_(ps.detach(), alpha=1 - training.ema)
        m = training.center_momentum
        center.mul_(m).add_(torch.cat(t_out).mean(0, keepdim=True), alpha=1 - m)
    return loss


def train_dino(pairs: list[tuple[np.ndarray, np.ndarray]], seconds: float = math.inf, seed: int = 0, *,
               max_steps: int | None = None, training: DinoTrainingConfig = DinoTrainingConfig(), log=print):
    """DINO self-distillation of the tiny ViT for `max_steps` steps or `seconds`, whichever ends
    first; returns the teacher backbone (as DINO does). Recipe: `training`.

    The two global crops come from the two renderings of a pair (pass (x, x) for DINO's
    single-image crops); the student also sees `n_local` small crops; the teacher only the
    global ones. Loss: cross-entropy of the centred, sharpened teacher over the student."""
    student = torch.nn.Sequential(new_vit(seed), DinoHead(DINO_KWARGS["embed_dim"]))
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    size = DINO_KWARGS["img_size"]
    first = _to_tensor([a for a, _ in pairs], size, IMAGENET_MEAN, IMAGENET_STD)
    second = _to_tensor([b for _, b in pairs], size, IMAGENET_MEAN, IMAGENET_STD)
    center = torch.zeros(1, student[1].last.out_features)
    opt = torch.optim.AdamW(student.parameters(), lr=training.lr, weight_decay=0.04)
    gen = torch.Generator().manual_seed(seed)
    start, step = time.monotonic(), 0
    while time.monotonic() - start < seconds and (max_steps is None or step < max_steps):
        idx = torch.randperm(len(pairs), generator=gen)[:training.batch]
        views = _dino_views(first, second, idx, training.n_local, gen)
        loss = _dino_step(student, teacher, opt, views, center, training)
        step += 1
        if step % 50 == 0:
            log(f"dino step {step} loss {loss.item():.3f} ({time.monotonic() - start:.0f}s)")
    return teacher[0].eval()
