"""DINO: the CLS-token cosine x100 of a timm ViT, with the preprocessing coded in XVerse.

Protocol `xverse` (XVerse eval/tools' DINO step, and DreamBench's DINO as the DreamBooth paper
defines it): timm `vit_small_patch16_224.dino` (DINO v1 ViT-S/16), resize the short side to 256
(bicubic), center crop 224, ImageNet mean and std, cosine of the CLS tokens x100. Protocol
`dreambench++` (dreambench_plus/metrics/dino_score.py) is the same transform on DINO v1 ViT-S/8
(`vit_small_patch8_224.dino`); a section naming a protocol and another model fails. timm's own default
for this tag is crop_pct 0.9 (resize 248), so the transform is built here, not taken from
timm. `model` may be `local-dir:<folder>` (the tiny-world evaluator: `dino_config.json` with
`model`, `model_kwargs`, `preprocess`, plus `model.safetensors`); otherwise `weights` is a
local file, or null to use timm's pretrained weights from the Hugging Face cache.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mosaic.infra.artefacts import check_artefact

from .manifest import Item
from .registry import Context, Metric, MetricUnavailable, Row, cosine100, register, section

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROTOCOL = {"resize": 256, "crop": 224, "interpolation": "bicubic", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
CONFIG_FILE, WEIGHTS_FILE = "dino_config.json", "model.safetensors"
PROTOCOL_MODELS = {"xverse": "vit_small_patch16_224.dino", "dreambench++": "vit_small_patch8_224.dino"}


def dino_transform(resize: int, crop: int, interpolation: str, mean, std):
    from torchvision import transforms as T  # here: a second to import, needed only when DINO loads

    mode = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}[interpolation]
    return T.Compose([T.Resize(resize, interpolation=mode), T.CenterCrop(crop), T.ToTensor(),
                      T.Normalize(mean, std)])


def build_vit(model: str, model_kwargs: dict[str, Any] | None = None, pretrained: bool = False, **kw):
    """A timm ViT returning its (normed) CLS token: num_classes=0, global_pool='token'."""
    import timm

    return timm.create_model(model, pretrained=pretrained, num_classes=0, global_pool="token",
                             **(model_kwargs or {}), **kw)


class DinoModel:
    def __init__(self, key: str, sec: dict[str, Any], protocol: str = "xverse"):
        # torch here, not at the top: metrics.config imports this module (PROTOCOL) and stays light
        import torch
        from safetensors.torch import load_file

        self.torch = torch
        name, prep, kwargs = sec.get("model") or PROTOCOL_MODELS[protocol], dict(PROTOCOL), {}
        if not name.startswith("local-dir:") and name != PROTOCOL_MODELS[protocol]:
            raise ValueError(f"metrics config section {key!r}: model {name!r} is not the model of protocol "
                             f"{protocol!r} ({PROTOCOL_MODELS[protocol]})")
        weights, local = sec.get("weights"), name.startswith("local-dir:")
        if local:
            folder = Path(name[len("local-dir:"):])
            cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
            for p in (cfg_path, weights):
                if not p.is_file():
                    raise MetricUnavailable(f"{key}.model: {p} not found (train the tiny-world evaluators "
                                            f"or fix the path)")
            check_artefact(folder)  # shipped evaluators: refused if their bytes disagree with their provenance
            saved = json.loads(cfg_path.read_text())
            name, kwargs = saved["model"], saved.get("model_kwargs", {})
            prep.update(saved.get("preprocess", {}))
        prep.update({k: sec[k] for k in PROTOCOL if k in sec})
        if local:
            self.net = build_vit(name, kwargs)  # our own saved evaluator: plain state dict
            try:
                self.net.load_state_dict(load_file(str(weights)))
            except Exception as e:  # wrong model (keys, shapes) or a corrupt file
                raise MetricUnavailable(f"{key}.model: {weights} does not hold {name} weights "
                                        f"({type(e).__name__}: {str(e)[:300]})") from None
        elif weights:
            if not Path(weights).expanduser().is_file():
                raise MetricUnavailable(f"{key}.weights: {weights} not found (provide the {name} weights there)")
            # timm's loader applies its checkpoint filter (original DINO .pth files load too)
            try:
                self.net = build_vit(name, kwargs, pretrained=True,
                                     pretrained_cfg_overlay={"file": str(Path(weights).expanduser())})
            except Exception as e:
                raise MetricUnavailable(f"{key}.weights: {weights} does not hold {name} weights "
                                        f"({type(e).__name__}: {str(e)[:300]})") from None
        else:
            try:
                self.net = build_vit(name, kwargs, pretrained=True)
            except Exception as e:  # hub / cache errors come in many types
                raise MetricUnavailable(f"{key}.weights is not set and timm cannot load pretrained {name} "
                                        f"({type(e).__name__}: {e}); set {key}.weights to a local file") from None
        self.net.eval()
        self.transform = dino_transform(prep["resize"], prep["crop"], prep["interpolation"], prep["mean"], prep["std"])
        self.model_name, self.weights = name, str(weights or f"timm pretrained {name}")
        self.world = str(sec.get("world", ""))
        self.id = f"dino:{name}:{self.weights}"
        self.procedure = (f"resize {prep['resize']} {prep['interpolation']}, center crop {prep['crop']}, "
                         f"mean {tuple(prep['mean'])} std {tuple(prep['std'])}; CLS cosine x100")

    def embed(self, arrays: list[np.ndarray]) -> np.ndarray:
        x = self.torch.stack([self.transform(Image.fromarray(a)) for a in arrays])
        with self.torch.no_grad():
            return self.net(x).float().numpy()


def load_dino(cfg: dict[str, Any], ctx: Context, key: str = "dino", protocol: str = "xverse") -> DinoModel:
    sec = section(cfg, key)
    ident = json.dumps(sec, sort_keys=True, default=str)
    return ctx.model(("dino", ident), lambda: DinoModel(key, sec, protocol))


@register
class Dino(Metric):
    name = "DINO"
    inputs = ("image", "references")
    config_key = "dino"
    model_keys = ("model", "weights")
    protocols = tuple(PROTOCOL_MODELS)

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.model = load_dino(cfg, ctx, protocol=self.protocol)

    def identity(self) -> dict[str, str]:
        m = self.model
        return {"model": m.model_name, "weights": m.weights, "protocol": self.protocol, "procedure": m.procedure,
                "world": m.world}

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        gen = self.ctx.image_embeddings(self.model, items, images)
        rows = []
        for i, it in enumerate(items):
            refs = self.ctx.ref_embeddings(self.model, [r.image for r in it.references])
            rows += [Row(i, j, float(cosine100(gen[i], e))) for j, e in enumerate(refs)]
        return rows
