"""AES: aesthetic-predictor-v2.5 (SigLIP so400m + an MLP head), on XVerseBench's x10 scale.

Why it exists: the paper's Table 2 reports AES and it enters the XVerseBench AVG. The model is
the `aesthetic-predictor-v2-5` package's: SigLIP vision tower, its pooled output L2-normalised,
then the head Linear(hidden,1024)-Linear(1024,128)-Linear(128,64)-Linear(64,16)-Linear(16,1)
(dropouts between, inactive at eval), giving a score on 1..10. XVerse's kit reports it x10
(shared/benchmarks/README.md: "AES from the aesthetic-predictor-v2.5 SigLIP model, x10"; the
paper's AES cells are 50-60), hence protocol `xverse` = package score x10.

Loaded here with native transformers classes (`SiglipVisionModel`, `SiglipImageProcessor`) from
a local SigLIP folder (`encoder`, e.g. google/siglip-so400m-patch14-384) and the head's state
dict (`head`, aesthetic_predictor_v2_5.pth) through `torch.load(weights_only=True)`; the
package itself downloads both, so it is only the parity reference (tests/test_metrics_aes.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .manifest import Item
from .registry import Metric, MetricUnavailable, Row, register, section

SCALE = 10.0  # XVerse reports the 1..10 score x10


def aes_head(hidden: int):
    import torch.nn as nn

    return nn.Sequential(nn.Linear(hidden, 1024), nn.Dropout(0.5), nn.Linear(1024, 128), nn.Dropout(0.5),
                         nn.Linear(128, 64), nn.Dropout(0.5), nn.Linear(64, 16), nn.Dropout(0.2), nn.Linear(16, 1))


def load_state(path: Path) -> dict:
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickled objects beyond tensors: refuse, never unpickle arbitrary code
        raise ValueError(f"{path}: not loadable with torch.load(weights_only=True) ({e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


class AesModel:
    def __init__(self, key: str, sec: dict[str, Any]):
        import torch
        from transformers import SiglipImageProcessor, SiglipVisionModel

        enc, head = sec.get("encoder"), sec.get("head")
        if not enc or not (Path(enc).expanduser() / "config.json").is_file():
            raise MetricUnavailable(f"{key}.encoder: {enc or 'not set'}; give the local SigLIP folder "
                                    "(google/siglip-so400m-patch14-384)")
        if not head or not Path(head).expanduser().is_file():
            raise MetricUnavailable(f"{key}.head: {head or 'not set'}; give aesthetic_predictor_v2_5.pth")
        self.torch = torch
        self.device = sec.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        self.encoder = SiglipVisionModel.from_pretrained(str(Path(enc).expanduser())).to(self.device).eval()
        self.processor = SiglipImageProcessor.from_pretrained(str(Path(enc).expanduser()))
        state = load_state(Path(head).expanduser())
        state = {k[len("scoring_head."):] if k.startswith("scoring_head.") else k: v for k, v in state.items()}
        self.head = aes_head(self.encoder.config.hidden_size)
        self.head.load_state_dict(state)
        self.head.to(self.device).eval()
        self.weights = f"{enc}; {head}"

    def score(self, images: list[np.ndarray]) -> np.ndarray:
        """The package's score (1..10) per image."""
        x = self.processor(images=[Image.fromarray(a) for a in images], return_tensors="pt")["pixel_values"]
        with self.torch.no_grad():
            pooled = self.encoder(pixel_values=x.to(self.device)).pooler_output
            out = self.head(pooled / pooled.norm(dim=-1, keepdim=True))
        return out.squeeze(-1).float().cpu().numpy()


@register
class AES(Metric):
    name = "AES"
    inputs = ("image",)
    config_key = "aes"
    model_keys = ("encoder", "head")
    protocols = ("xverse",)

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        sec = section(cfg, self.config_key)
        self.protocol  # noqa: B018  (an unknown protocol fails here, naming the section)
        self.model = ctx.model(("aes", str(sorted(sec.items()))), lambda: AesModel(self.config_key, sec))

    def identity(self) -> dict[str, str]:
        return {"model": "aesthetic-predictor-v2.5 (SigLIP + MLP head)", "weights": self.model.weights,
                "protocol": self.protocol, "procedure": "SigLIP pooled output L2-normalised, MLP head score "
                "(1..10) x10, as XVerse reports it", "world": ""}

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        return [Row(i, None, SCALE * float(v)) for i, v in enumerate(self.model.score(images))]
