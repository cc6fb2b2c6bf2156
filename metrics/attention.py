"""Mechanism metrics: alignment accuracy and leakage of reference->target attention.

The scores are mosaic.inference.attention_scores' (the trainer's held-out evaluation uses the same);
registered here so that `mosaic eval` reports them next to the image metrics when a manifest
line carries an attention file (format in `metrics.manifest`).

- alignment accuracy: the share of annotated reference points whose argmax target token
  lies within 1 token (Chebyshev distance on the target token grid) of its ground truth.
- leakage: the share of a reference's target-attention mass that lands inside the other
  subjects' target masks (tokens of its own mask excluded). A reference's attention
  distribution is the mean of its points' rows, normalised (the map MDL separates).
Both are reported as percentages (x100).
"""
from __future__ import annotations

import numpy as np

from mosaic.inference.attention_scores import alignment_accuracy, leakage, reference_maps
from mosaic.data.records import DataError

from .manifest import Item
from .registry import Metric, Row, register


def read_attention(item: Item) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """(attention rows per reference, ground-truth tokens per reference, token masks [K, th, tw])."""
    path, k = item.attention, len(item.references)
    try:
        with np.load(path) as z:
            missing = [n for j in range(k) for n in (f"attn{j}", f"gt{j}") if n not in z.files]
            missing += [] if "token_masks" in z.files else ["token_masks"]
            if missing:
                raise DataError(f"{path}: missing arrays {', '.join(missing)} (item {item.id}, {k} references)")
            attn, gt, masks = [z[f"attn{j}"] for j in range(k)], [z[f"gt{j}"] for j in range(k)], z["token_masks"]
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: unreadable attention file ({e})") from None
    if masks.ndim != 3 or masks.shape[0] != k:
        raise DataError(f"{path}: token_masks has shape {masks.shape}; expected [{k}, rows, cols]")
    return attn, gt, masks


class _Mechanism(Metric):
    inputs = ("attention", "references")
    config_key = "mechanism"
    protocols = ("mosaic",)  # the MOSAIC paper's definitions, coded in mosaic.inference.attention_scores
    procedure: str

    def identity(self) -> dict[str, str]:
        return {"model": "", "weights": "", "protocol": self.protocol, "procedure": self.procedure, "world": ""}

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        rows = []
        for i, it in enumerate(items):
            if it.attention is None:
                rows += [Row(i, j, float("nan"), "no attention maps in the manifest") for j in range(len(it.references))]
                continue
            attn, gt, masks = read_attention(it)
            rows += [Row(i, j, v, "" if np.isfinite(v) else "no annotated points")
                     for j, v in enumerate(self.values(attn, gt, masks))]
        return rows


@register
class AlignmentAccuracy(_Mechanism):
    name = "alignment accuracy"
    procedure = "share of points whose argmax target token is within 1 token (Chebyshev) x100"

    def values(self, attn, gt, masks) -> list[float]:
        return [100 * alignment_accuracy(a, g, masks.shape[1:]) for a, g in zip(attn, gt)]


@register
class Leakage(_Mechanism):
    name = "leakage"
    procedure = "share of the mean point-attention map inside other subjects' token masks x100"

    def values(self, attn, gt, masks) -> list[float]:
        t = masks.shape[1] * masks.shape[2]
        maps = reference_maps([a if len(a) else np.zeros((1, t)) for a in attn])
        leak = leakage(maps, masks.reshape(len(attn), -1))
        return [100 * v if len(a) else float("nan") for a, v in zip(attn, leak.tolist())]
