"""Mechanism metrics: alignment accuracy and leakage of reference->target attention.

Pure functions, used by the trainer's evaluation (issue 3) and registered here so that
`mosaic eval` reports them next to the image metrics when a manifest line carries an
attention file (format in `metrics.manifest`).

- alignment accuracy: the share of annotated reference points whose argmax target token
  lies within 1 token (Chebyshev distance on the target token grid) of its ground truth.
- leakage: the share of a reference's target-attention mass that lands inside the other
  subjects' target masks (tokens of its own mask excluded). A reference's attention
  distribution is the mean of its points' rows, normalised (the map MDL separates).
Both are reported as percentages (x100).
"""
from __future__ import annotations

import numpy as np
import torch

from mosaic.data.sample import DataError

from .manifest import Item
from .registry import Metric, Row, register


def point_hits(attn, gt, grid: tuple[int, int], tolerance: int = 1) -> torch.Tensor:
    """bool [P]: the argmax target token of each row of `attn` [P, T] is within `tolerance`
    tokens (Chebyshev) of `gt` [P] on the row-major `grid` (rows, cols), rows * cols = T."""
    attn, gt = torch.as_tensor(attn), torch.as_tensor(gt).long()
    rows, cols = grid
    if attn.shape[-1] != rows * cols:
        raise ValueError(f"attention has {attn.shape[-1]} target tokens; grid {rows}x{cols} has {rows * cols}")
    if attn.shape[:-1] != gt.shape:
        raise ValueError(f"attention rows {tuple(attn.shape[:-1])} do not match ground truth {tuple(gt.shape)}")
    pred = attn.argmax(-1)
    dist = torch.maximum((pred // cols - gt // cols).abs(), (pred % cols - gt % cols).abs())
    return dist <= tolerance


def alignment_accuracy(attn, gt, grid: tuple[int, int], tolerance: int = 1) -> float:
    """Share of points hit (see `point_hits`); NaN for no points."""
    hits = point_hits(attn, gt, grid, tolerance)
    return float(hits.float().mean()) if hits.numel() else float("nan")


def reference_maps(rows_per_ref: list) -> torch.Tensor:
    """[K, T]: each reference's normalised mean attention over target tokens."""
    maps = torch.stack([torch.as_tensor(r, dtype=torch.float64).reshape(-1, r.shape[-1]).mean(0) for r in rows_per_ref])
    return maps / maps.sum(-1, keepdim=True).clamp_min(1e-12)


def leakage(maps, token_masks) -> torch.Tensor:
    """[K]: share of each reference's map `maps` [K, T] inside the OTHER subjects' masks
    (`token_masks` bool [K, T]), excluding tokens of its own mask."""
    maps = torch.as_tensor(maps, dtype=torch.float64)
    masks = torch.as_tensor(token_masks).bool().reshape(maps.shape)
    others = (masks.sum(0, keepdim=True) - masks.long()) > 0
    others &= ~masks
    return (maps * others).sum(-1) / maps.sum(-1).clamp_min(1e-12)


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

    def identity(self) -> dict[str, str]:
        return {"model": "", "weights": "", "protocol": self.protocol, "world": ""}

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
    protocol = "share of points whose argmax target token is within 1 token (Chebyshev) x100"

    def values(self, attn, gt, masks) -> list[float]:
        return [100 * alignment_accuracy(a, g, masks.shape[1:]) for a, g in zip(attn, gt)]


@register
class Leakage(_Mechanism):
    name = "leakage"
    protocol = "share of the mean point-attention map inside other subjects' token masks x100"

    def values(self, attn, gt, masks) -> list[float]:
        t = masks.shape[1] * masks.shape[2]
        maps = reference_maps([a if len(a) else np.zeros((1, t)) for a in attn])
        leak = leakage(maps, masks.reshape(len(attn), -1))
        return [100 * v if len(a) else float("nan") for a, v in zip(attn, leak.tolist())]
