"""CLIP-I and CLIP-T through open_clip, with the model and pretrained tag as recorded choices.

No compared system ships its CLIP-I/CLIP-T code, so the choices are explicit config:
`model` (an open_clip name, or `local-dir:<folder>` for the tiny-world evaluator) and
`pretrained` (an open_clip tag resolved through the Hugging Face cache, or a checkpoint file).
Protocol `dreambench++` (dreambench_plus/metrics/clip_score.py): OpenAI CLIP ViT-B/32 for both
CLIP-I and CLIP-T, CLIP eval transform (short side 224 bicubic, centre crop), cosine x100.
OpenAI's CLIP was trained with QuickGELU; open_clip's plain model names build GELU towers, so
a tag that open_clip marks `quick_gelu` (every `openai` tag) is built with QuickGELU, and a
checkpoint file needs `quick_gelu: true|false` in its section (no silent guess).
Images go through open_clip's own eval transform for that model, unchanged. Scores are
cosine x100. CLIP-T scores the prompt without subject tokens (`Item.clip_t_prompt`);
CLIP-I scores each reference, and the aggregate reports the mean and the per-image minimum.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mosaic.infra.artefacts import check_artefact

from .manifest import Item
from .registry import Context, Metric, MetricUnavailable, Row, cosine100, register, section


def _check_source(key: str, model: str, pretrained: str | None) -> None:
    """Fail early, naming the config key and the path, when configured weights are absent."""
    if model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):])
        if not (folder / "open_clip_config.json").is_file():
            raise MetricUnavailable(f"{key}.model: {folder}/open_clip_config.json not found "
                                    f"(train the tiny-world evaluators or fix the path)")
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")) and not any(folder.glob("*.pth")):
            raise MetricUnavailable(f"{key}.model: no weights file in {folder}")
        check_artefact(folder)  # shipped evaluators: refused if their bytes disagree with their provenance
        return
    if not pretrained:
        raise MetricUnavailable(f"{key}.pretrained is not set: give an open_clip tag for {model} "
                                f"(weights in the Hugging Face cache) or a checkpoint file")
    looks_like_path = "/" in pretrained or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")
    if looks_like_path and not Path(pretrained).expanduser().is_file():
        raise MetricUnavailable(f"{key}.pretrained: checkpoint file {pretrained} not found "
                                f"(provide the {model} weights there)")


def quick_gelu(key: str, model: str, pretrained: str | None, setting: bool | None = None) -> bool:
    """Whether the towers need QuickGELU: the section's `quick_gelu`, else what open_clip records for the
    tag (True for OpenAI's weights); a checkpoint file must say. A local-dir model's saved config decides."""
    import open_clip

    if model.startswith("local-dir:"):
        if setting is not None:
            raise ValueError(f"{key}.quick_gelu: a local-dir: model's open_clip_config.json decides its activation")
        return False
    if setting is not None:
        if not isinstance(setting, bool):
            raise ValueError(f"{key}.quick_gelu: {setting!r} must be true or false")
        return setting
    tag = open_clip.get_pretrained_cfg(model, pretrained or "")
    if tag:
        return bool(tag.get("quick_gelu", False)) or model.endswith("-quickgelu")
    if model.endswith("-quickgelu"):
        return True
    raise MetricUnavailable(f"{key}.quick_gelu is not set: {pretrained} is a checkpoint file, not an open_clip tag; "
                            f"set {key}.quick_gelu: true for OpenAI CLIP weights (trained with QuickGELU), "
                            f"false for GELU-trained ones")


def create(model: str, pretrained: str | None, quick: bool, load_weights: bool = True):
    """open_clip's model and eval transform, QuickGELU forced when `quick` (the loader's one construction path)."""
    import open_clip

    local = model.startswith("local-dir:")
    return open_clip.create_model_and_transforms(model, pretrained=None if local else pretrained,
                                                 force_quick_gelu=quick, load_weights=load_weights)


class ClipModel:
    """An open_clip model with its eval transform and tokenizer; embeddings are L2-normalised."""

    def __init__(self, key: str, model: str, pretrained: str | None = None, world: str = "",
                 quick_gelu_setting: bool | None = None):
        import open_clip

        _check_source(key, model, pretrained)
        self.quick_gelu = quick_gelu(key, model, pretrained, quick_gelu_setting)
        try:
            net, _, preprocess = create(model, pretrained, self.quick_gelu)
        except (RuntimeError, OSError) as e:
            raise MetricUnavailable(f"{key}: cannot load open_clip {model} with pretrained={pretrained!r} "
                                    f"({e}); put the weights in the Hugging Face cache or set "
                                    f"{key}.pretrained to a local checkpoint file") from None
        self.net, self.preprocess = net.eval(), preprocess
        self.tokenizer = open_clip.get_tokenizer(model)
        self.id = f"open_clip:{model}:{pretrained or ''}" + (":quickgelu" if self.quick_gelu else "")
        self.world = world
        self.weights = model[len("local-dir:"):] if model.startswith("local-dir:") else str(pretrained)
        self.model_name = model
        act = ("activation of its open_clip_config.json" if model.startswith("local-dir:")
               else "QuickGELU" if self.quick_gelu else "GELU")
        self.procedure = f"open_clip eval transform ({_describe(preprocess)}); {act}; cosine x100"

    def embed(self, arrays: list[np.ndarray]) -> np.ndarray:
        x = torch.stack([self.preprocess(Image.fromarray(a)) for a in arrays])
        with torch.no_grad():
            f = self.net.encode_image(x, normalize=True)
        return f.float().numpy()

    def embed_text(self, texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            f = self.net.encode_text(self.tokenizer(texts), normalize=True)
        return f.float().numpy()


def _describe(transform) -> str:
    return ", ".join(type(t).__name__ + (f"({getattr(t, 'size', '')})" if hasattr(t, "size") else "")
                     for t in getattr(transform, "transforms", [transform]))


def load_clip(cfg: dict[str, Any], ctx: Context, key: str) -> ClipModel:
    sec = section(cfg, key)
    if "model" not in sec:
        raise MetricUnavailable(f"{key}.model is not set")
    args = (sec["model"], sec.get("pretrained"))
    quick = sec.get("quick_gelu")
    return ctx.model(("clip", *args, quick), lambda: ClipModel(key, *args, world=str(sec.get("world", "")),
                                                               quick_gelu_setting=quick))


class _ClipMetric(Metric):
    model_keys = ("model", "pretrained", "quick_gelu")
    protocols = ("dreambench++",)  # dreambench_plus/metrics/clip_score.py: OpenAI ViT-B/32, cosine x100

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.model = load_clip(cfg, ctx, self.config_key)

    def identity(self) -> dict[str, str]:
        m = self.model
        return {"model": m.model_name, "weights": m.weights, "protocol": self.protocol, "procedure": m.procedure,
                "world": m.world}


@register
class ClipI(_ClipMetric):
    name = "CLIP-I"
    inputs = ("image", "references")
    config_key = "clip_i"

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        gen = self.ctx.image_embeddings(self.model, items, images)
        rows = []
        for i, it in enumerate(items):
            refs = self.ctx.ref_embeddings(self.model, [r.image for r in it.references])
            for j, e in enumerate(refs):
                rows.append(Row(i, j, float(cosine100(gen[i], e))))
        return rows


@register
class ClipT(_ClipMetric):
    name = "CLIP-T"
    inputs = ("image", "prompt")
    config_key = "clip_t"

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        gen = self.ctx.image_embeddings(self.model, items, images)
        texts = [it.clip_t_prompt for it in items]
        emb = self.model.embed_text([t or " " for t in texts])
        return [Row(i, None, float(cosine100(gen[i], emb[i]))) if t.strip() else
                Row(i, None, float("nan"), "empty prompt") for i, t in enumerate(texts)]
