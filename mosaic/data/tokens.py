"""Pixel correspondences -> token indices, with one owner per target token.

A FLUX token covers `downsample * patch` pixels per side (8 * 2 = 16 px for the FLUX VAE
with 2x2 packing). Indices are row-major. Reference tokens get a global index offset by
the token counts of the references before them, matching the [ref_1 ... ref_K] order of
the model's token sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class CorrespondenceConflict(ValueError):
    """Strict mode: a target token is claimed by more than one reference."""


def token_grid(size_hw: tuple[int, int], downsample: int, patch: int) -> tuple[int, int]:
    """(rows, cols) of the token grid for an image of `size_hw` pixels."""
    cell = downsample * patch
    h, w = size_hw
    if h % cell or w % cell:
        raise ValueError(f"image size {h}x{w} is not a multiple of downsample*patch = {cell}")
    return h // cell, w // cell


def pixel_to_token(y, x, size_hw: tuple[int, int], downsample: int, patch: int) -> np.ndarray:
    """Row-major token index of pixel(s) (y, x); raises if any pixel is outside the image."""
    y, x = np.asarray(y, np.int64), np.asarray(x, np.int64)
    h, w = size_hw
    bad = (y < 0) | (y >= h) | (x < 0) | (x >= w)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"pixel ({int(y.flat[i])}, {int(x.flat[i])}) outside image of size {h}x{w}")
    cell = downsample * patch
    _, cols = token_grid(size_hw, downsample, patch)
    return (y // cell) * cols + x // cell


@dataclass
class TokenCorrespondences:
    """Token-level correspondences of one sample.

    ref_token: local (within-reference) row-major index; global_ref_token adds the offset of
    the references before it. One entry per annotated reference token.
    """

    ref_index: np.ndarray  # int64 [N]: which reference (0..K-1)
    ref_token: np.ndarray  # int64 [N]: local token index in that reference
    global_ref_token: np.ndarray  # int64 [N]: index into the concatenated reference tokens
    target_token: np.ndarray  # int64 [N]
    dropped: int  # points dropped because another reference owned their target token

    def for_reference(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        sel = self.ref_index == k
        return self.ref_token[sel], self.target_token[sel]


def _token_pairs(points: list[np.ndarray], ref_sizes: list[tuple[int, int]], target_size: tuple[int, int],
                 downsample: int, patch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pixel pair as (reference, reference token, target token), concatenated in reference order."""
    ks, rts, tts = [], [], []
    for k, (p, size) in enumerate(zip(points, ref_sizes)):
        p = np.asarray(p, np.int64).reshape(-1, 4)
        ks.append(np.full(len(p), k, np.int64))
        rts.append(pixel_to_token(p[:, 0], p[:, 1], size, downsample, patch))
        tts.append(pixel_to_token(p[:, 2], p[:, 3], target_size, downsample, patch))
    k_all = np.concatenate(ks) if ks else np.zeros(0, np.int64)
    r_all = np.concatenate(rts) if rts else np.zeros(0, np.int64)
    t_all = np.concatenate(tts) if tts else np.zeros(0, np.int64)
    return k_all, r_all, t_all


def _owned(k_all: np.ndarray, t_all: np.ndarray, n_ref: int, n_tgt: int, strict: bool) -> np.ndarray:
    """Which pairs' reference owns their target token (most pairs on it; ties: lowest reference index);
    with `strict`, CorrespondenceConflict on the first pair that it does not."""
    counts = np.zeros((max(n_ref, 1), n_tgt), np.int64)  # votes of each reference for each target token
    np.add.at(counts, (k_all, t_all), 1)
    owner = counts.argmax(0)  # argmax picks the lowest index on ties
    keep = owner[t_all] == k_all
    if strict and not keep.all():
        t = int(t_all[~keep][0])
        claim = np.flatnonzero(counts[:, t]).tolist()
        raise CorrespondenceConflict(f"target token {t} is claimed by references {claim}")
    return keep


def _majority_targets(k_all: np.ndarray, r_all: np.ndarray, t_all: np.ndarray) -> np.ndarray:
    """[N, 3] (reference, reference token, target token): each reference token's most-voted target token
    (ties: lowest target index), sorted by (reference, reference token)."""
    if not len(k_all):
        return np.zeros((0, 3), np.int64)
    pairs, votes = np.unique(np.stack([k_all, r_all, t_all], 1), axis=0, return_counts=True)
    # Sort by (k, r, -votes, t) and keep the first of each (k, r).
    order = np.lexsort((pairs[:, 2], -votes, pairs[:, 1], pairs[:, 0]))
    pairs = pairs[order]
    first = np.ones(len(pairs), bool)
    first[1:] = (pairs[1:, 0] != pairs[:-1, 0]) | (pairs[1:, 1] != pairs[:-1, 1])
    return pairs[first]


def map_correspondences(
    points: list[np.ndarray],
    ref_sizes: list[tuple[int, int]],
    target_size: tuple[int, int],
    downsample: int,
    patch: int,
    strict: bool = False,
) -> TokenCorrespondences:
    """Map per-reference pixel correspondences [P_k, 4] = (ry, rx, ty, tx) to tokens.

    1. Each pixel pair becomes a (reference token, target token) pair.
    2. Ownership: a target token belongs to the reference with the most pixel pairs on it
       (ties: lowest reference index). Pairs of other references on that token are dropped
       and counted; with `strict=True` any such conflict raises CorrespondenceConflict.
    3. Each annotated reference token keeps one target token: the one most of its pixels
       land on (ties: lowest target index). This is the G(u_j) -> v_j map SCAL needs.
    The output is sorted by (reference, reference token): deterministic for a given input.
    """
    if len(points) != len(ref_sizes):
        raise ValueError(f"{len(points)} point arrays for {len(ref_sizes)} references")
    k_all, r_all, t_all = _token_pairs(points, ref_sizes, target_size, downsample, patch)
    n_tgt = int(np.prod(token_grid(target_size, downsample, patch)))
    keep = _owned(k_all, t_all, len(points), n_tgt, strict)
    pairs = _majority_targets(k_all[keep], r_all[keep], t_all[keep])
    counts_per_ref = [int(np.prod(token_grid(s, downsample, patch))) for s in ref_sizes]
    offsets = np.concatenate([[0], np.cumsum(counts_per_ref)[:-1]]).astype(np.int64) if ref_sizes else np.zeros(0, np.int64)
    return TokenCorrespondences(
        ref_index=pairs[:, 0],
        ref_token=pairs[:, 1],
        global_ref_token=pairs[:, 1] + (offsets[pairs[:, 0]] if len(pairs) else 0),
        target_token=pairs[:, 2],
        dropped=int((~keep).sum()),
    )


def mask_to_tokens(mask: np.ndarray, downsample: int, patch: int, threshold: float = 0.5) -> np.ndarray:
    """Token-level mask: a token is in the mask when at least `threshold` of its pixels are."""
    cell = downsample * patch
    rows, cols = token_grid(mask.shape[-2:], downsample, patch)
    m = np.asarray(mask, np.float32).reshape(*mask.shape[:-2], rows, cell, cols, cell)
    return m.mean(axis=(-3, -1)) >= threshold
