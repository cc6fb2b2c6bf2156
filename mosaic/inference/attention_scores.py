"""Scores of reference->target attention against ground truth: alignment and leakage.

Why it exists: the trainer's held-out evaluation (mosaic.inference.mechanism) and the metrics suite's
mechanism metrics (metrics.attention) must score attention with the same pure functions.

- alignment accuracy: the share of annotated reference points whose argmax target token
  lies within 1 token (Chebyshev distance on the target token grid) of its ground truth.
- leakage: the share of a reference's target-attention mass that lands inside the other
  subjects' target masks (tokens of its own mask excluded). A reference's attention
  distribution is the mean of its points' rows, normalised (the map MDL separates).
- subject leakage: leakage / (leakage + own share), the wrong-subject share of the mass
  that lands on subjects.
"""
from __future__ import annotations

import torch


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


def mask_shares(a: torch.Tensor, token_masks: torch.Tensor, ref_mask: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(leakage, own share) of every valid reference of a batch: leakage per sample
    over its real references, and the share of a^(k) inside its own mask (for context: how much of
    the mass that is not leaking lands on the right subject). a, token_masks [B, K, Nt]; ref_mask,
    valid [B, K]. Each output has one value per valid reference."""
    leak, own = [], []
    for b in range(len(a)):
        k, v = int(ref_mask[b].sum()), valid[b, :int(ref_mask[b].sum())]
        leak.append(leakage(a[b, :k], token_masks[b, :k])[v])
        own.append(((a[b, :k] * token_masks[b, :k]).sum(-1) / a[b, :k].sum(-1).clamp_min(1e-12))[v])
    return torch.cat(leak).float(), torch.cat(own).float()


def subject_leakage(leak: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Per reference: the share of its on-subject mass (own + other subjects) on the other subjects;
    0 for a reference with no mass on any subject."""
    return leak / (leak + own).clamp_min(1e-12)
