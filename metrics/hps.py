"""Human preference scores: HPSv2.1 (loaded once, here) and HPSv3 (its own environment).

HPSv2.1 is open_clip ViT-H-14 with the HPS_v2.1 checkpoint (`{"state_dict": ...}`, the
format `hpsv2` loads). The `hpsv2` package reloads the checkpoint on every call and lacks
its tokenizer file, so this module builds the architecture with open_clip, loads the
checkpoint once, and uses open_clip's tokenizer. Preprocessing is HPSv2's eval transform
(longest side to the model size, zero padding to a square). Score: cosine of the image and
prompt embeddings x100 (`hpsv2.score` returns the same number /100).

HPSv3 pins an old transformers, so it runs in `workflow/envs/hpsv3.yaml`:
`python -m metrics.hps_job MANIFEST OUT.csv --checkpoint HPSv3.safetensors` (metrics.hps_job) writes rows in the
evaluation table's format. In the main environment the metric fails clearly unless the
`hpsv3` package is importable.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mosaic.infra.safeload import torch_file

from .manifest import Item
from .registry import Metric, MetricUnavailable, Row, cosine100, register, section


def load_hps_checkpoint(net, path: str | Path) -> None:
    """Load an HPS checkpoint (`{"state_dict": ...}` or a bare state dict) into an open_clip model (tensors only:
    mosaic.infra.safeload.torch_file refuses a file that needs more)."""
    state = torch_file(path, "HPS checkpoint")
    state = state.get("state_dict", state)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    net.load_state_dict(state)


class HpsV21Model:
    def __init__(self, key: str, sec: dict[str, Any]):
        import open_clip

        ckpt, name = sec.get("checkpoint"), sec.get("model", "ViT-H-14")
        if not ckpt:
            raise MetricUnavailable(f"{key}.checkpoint is not set: give the path of HPS_v2.1_compressed.pt")
        if not Path(ckpt).expanduser().is_file():
            raise MetricUnavailable(f"{key}.checkpoint: {ckpt} not found (put HPS_v2.1_compressed.pt there)")
        self.net = open_clip.create_model(name, pretrained=None).eval()
        load_hps_checkpoint(self.net, Path(ckpt).expanduser())
        self.preprocess = open_clip.image_transform(self.net.visual.image_size, is_train=False,
                                                    resize_mode="longest", fill_color=0)
        self.tokenizer = open_clip.get_tokenizer(name)
        self.model_name, self.weights = name, str(ckpt)
        self.world = str(sec.get("world", ""))

    def score(self, images: list[np.ndarray], prompts: list[str]) -> np.ndarray:
        x = torch.stack([self.preprocess(Image.fromarray(a)) for a in images])
        with torch.no_grad():
            f_img = self.net.encode_image(x, normalize=True)
            f_txt = self.net.encode_text(self.tokenizer(prompts), normalize=True)
        return cosine100(f_img.numpy(), f_txt.numpy())


@register
class HpsV21(Metric):
    name = "HPSv2.1"
    inputs = ("image", "prompt")
    config_key = "hpsv21"
    model_keys = ("model", "checkpoint")
    protocols = ("hpsv2",)  # the hpsv2 package's score (HPSv2.1 checkpoint), x100

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        sec = section(cfg, self.config_key)
        self.model = ctx.model(("hpsv21", str(sorted(sec.items()))), lambda: HpsV21Model(self.config_key, sec))

    def identity(self) -> dict[str, str]:
        return {"model": f"open_clip {self.model.model_name} + HPS_v2.1", "weights": self.model.weights,
                "protocol": self.protocol,
                "procedure": "HPSv2 eval transform (longest side, zero pad); full prompt; cosine x100",
                "world": self.model.world}

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        values = self.model.score(images, [it.prompt for it in items])
        return [Row(i, None, float(v)) for i, v in enumerate(values)]


def _hpsv3(key: str, sec: dict[str, Any]):
    try:
        from hpsv3 import HPSv3RewardInferencer
    except ImportError:
        raise MetricUnavailable(
            "HPSv3 needs the `hpsv3` package, which pins an old transformers: create the environment "
            "workflow/envs/hpsv3.yaml and run `python -m metrics.hps_job MANIFEST OUT.csv --checkpoint PATH` "
            "there") from None
    ckpt = sec.get("checkpoint")
    if not ckpt or not Path(ckpt).expanduser().is_file():
        raise MetricUnavailable(f"{key}.checkpoint: {ckpt or 'not set'}; give the local HPSv3 checkpoint file")
    return HPSv3RewardInferencer(checkpoint_path=str(Path(ckpt).expanduser()), device=sec.get("device", "cuda"))


@register
class HpsV3(Metric):
    name = "HPSv3"
    inputs = ("image", "prompt")
    config_key = "hpsv3"
    model_keys = ("checkpoint",)
    protocols = ("hpsv3",)  # the hpsv3 package's HPSv3RewardInferencer

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.sec = section(cfg, self.config_key)
        self.inferencer = ctx.model(("hpsv3", str(sorted(self.sec.items()))), lambda: _hpsv3(self.config_key, self.sec))

    def identity(self) -> dict[str, str]:
        return {"model": "HPSv3 (hpsv3 package)", "weights": str(self.sec.get("checkpoint")),
                "protocol": self.protocol, "procedure": "HPSv3RewardInferencer.reward mean (mu); full prompt",
                "world": ""}

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        with torch.no_grad():
            rewards = self.inferencer.reward(prompts=[it.prompt for it in items],
                                             image_paths=[str(it.image) for it in items])
        return [Row(i, None, float(r[0])) for i, r in enumerate(rewards)]

