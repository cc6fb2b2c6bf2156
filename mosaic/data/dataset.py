"""torch Dataset and collate function over the on-disk sample format.

Samples differ in K (number of references) and in point counts, so the collate function
pads both and returns masks: `ref_mask[b, k]` marks real references and
`point_mask[b, k, p]` marks real correspondences. References are resized to one common
size (`ref_size`) so they stack; their pixel correspondences are rescaled with them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .records import DataError, Sample, load_sample, read_manifest
from .tokens import CorrespondenceConflict, map_correspondences, mask_to_tokens


@dataclass
class TokenSpec:
    """How pixels become tokens: image sizes, codec downsample and packing patch."""

    target_size: tuple[int, int]
    ref_size: tuple[int, int]
    downsample: int
    patch: int


def _resize(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == tuple(size_hw):
        return img
    return np.asarray(Image.fromarray(img).resize((size_hw[1], size_hw[0]), Image.BICUBIC))


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> float CHW in [-1, 1]."""
    return torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def encode_sample(sample: Sample, spec: TokenSpec, strict: bool = False, max_k: int | None = None) -> dict[str, Any]:
    """One sample -> tensors at token level (unpadded)."""
    if sample.k == 0:
        raise DataError(f"sample {sample.id}: K = 0 (no references)")
    if max_k is not None and sample.k > max_k:
        raise DataError(f"sample {sample.id}: K = {sample.k} exceeds the model's limit of {max_k} references")
    if tuple(sample.target.shape[:2]) != tuple(spec.target_size):
        raise DataError(f"sample {sample.id}: target size {sample.target.shape[:2]} != configured {spec.target_size}")
    points = []
    refs = []
    for r in sample.references:
        h, w = r.image.shape[:2]
        p = np.asarray(r.points, np.int64).reshape(-1, 4).copy()
        if (h, w) != tuple(spec.ref_size):  # rescale reference coordinates with the image
            p[:, 0] = np.minimum(p[:, 0] * spec.ref_size[0] // h, spec.ref_size[0] - 1)
            p[:, 1] = np.minimum(p[:, 1] * spec.ref_size[1] // w, spec.ref_size[1] - 1)
        points.append(p)
        refs.append(_to_tensor(_resize(r.image, spec.ref_size)))
    tc = map_correspondences(points, [spec.ref_size] * sample.k, spec.target_size, spec.downsample, spec.patch,
                             strict=strict)
    per_ref = [tc.for_reference(k) for k in range(sample.k)]
    return {
        "id": sample.id,
        "prompt": sample.prompt,
        "phrases": [r.phrase for r in sample.references],
        "target": _to_tensor(sample.target),
        "refs": torch.stack(refs),
        "masks": torch.from_numpy(np.asarray(sample.masks, bool)),
        "token_masks": torch.from_numpy(mask_to_tokens(sample.masks, spec.downsample, spec.patch)),
        "ref_tokens": [torch.from_numpy(r) for r, _ in per_ref],
        "target_tokens": [torch.from_numpy(t) for _, t in per_ref],
        "dropped": tc.dropped,
    }


class MultiSubjectDataset(torch.utils.data.Dataset):
    """Reads a dataset folder written by `DatasetWriter`."""

    def __init__(self, root: str | os.PathLike, spec: TokenSpec, strict: bool = False, max_k: int | None = None):
        self.root = Path(root)
        self.records = read_manifest(self.root)
        manifest = self.root / "manifest.jsonl"
        if not self.records:
            raise DataError(f"{manifest}: empty manifest")
        empty = [r for r in self.records if not r["references"]]
        if empty:  # checked up front: a training would otherwise fail at the step that draws the sample
            raise DataError(f"{manifest}: sample {empty[0]['id']} field k = 0: a sample needs at least one "
                            f"reference ({len(empty)} such samples)")
        self.spec, self.strict, self.max_k = spec, strict, max_k
        if strict:  # ownership needs only the correspondence files: a conflict stops a training before it starts
            for rec in self.records:
                self._check_ownership(rec)

    def _check_ownership(self, rec: dict[str, Any]) -> None:
        path = self.root / rec["correspondences"]
        try:
            with np.load(path) as z:
                pts = [np.asarray(z[f"ref{k}"], np.int64).reshape(-1, 4) for k in range(len(rec["references"]))
                       if f"ref{k}" in z.files]
            # target coordinates only (ownership ignores the reference side)
            pts = [np.concatenate([np.zeros((len(p), 2), np.int64), p[:, 2:]], 1) for p in pts]
            map_correspondences(pts, [self.spec.ref_size] * len(pts), self.spec.target_size, self.spec.downsample,
                                self.spec.patch, strict=True)
        except CorrespondenceConflict as e:
            raise DataError(f"{path}: target tokens: {e} (sample {rec['id']}, strict ownership)") from None
        except Exception:  # a missing or malformed file: load_sample names it when the sample is read
            return

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        try:
            return encode_sample(load_sample(self.root, rec), self.spec, self.strict, self.max_k)
        except CorrespondenceConflict as e:  # strict mode: name the file; `validate_dataset` with a spec lists all
            raise DataError(f"{self.root / rec['correspondences']}: target tokens: {e} (sample {rec['id']}, "
                            f"strict ownership)") from None


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad K and point counts across the batch; masks mark what is real."""
    b = len(items)
    kmax = max(len(it["phrases"]) for it in items)
    pmax = max([len(t) for it in items for t in it["ref_tokens"]] + [1])
    _, c, rh, rw = items[0]["refs"].shape
    th, tw = items[0]["masks"].shape[-2:]
    tokh, tokw = items[0]["token_masks"].shape[-2:]
    out = {
        "id": [it["id"] for it in items],
        "prompt": [it["prompt"] for it in items],
        "phrases": [it["phrases"] for it in items],
        "target": torch.stack([it["target"] for it in items]),
        "refs": torch.zeros(b, kmax, c, rh, rw),
        "ref_mask": torch.zeros(b, kmax, dtype=torch.bool),
        "masks": torch.zeros(b, kmax, th, tw, dtype=torch.bool),
        "token_masks": torch.zeros(b, kmax, tokh, tokw, dtype=torch.bool),
        "ref_tokens": torch.zeros(b, kmax, pmax, dtype=torch.long),
        "target_tokens": torch.zeros(b, kmax, pmax, dtype=torch.long),
        "point_mask": torch.zeros(b, kmax, pmax, dtype=torch.bool),
        "dropped": torch.tensor([it["dropped"] for it in items]),
    }
    for i, it in enumerate(items):
        k = len(it["phrases"])
        out["refs"][i, :k] = it["refs"]
        out["ref_mask"][i, :k] = True
        out["masks"][i, :k] = it["masks"]
        out["token_masks"][i, :k] = it["token_masks"]
        for j, (r, t) in enumerate(zip(it["ref_tokens"], it["target_tokens"])):
            out["ref_tokens"][i, j, : len(r)] = r
            out["target_tokens"][i, j, : len(t)] = t
            out["point_mask"][i, j, : len(r)] = True
    return out


def load_dataset(root: str | os.PathLike, cfg, codec, max_refs: int, max_k: int | None = None) -> "MultiSubjectDataset":
    """The dataset at `root` tokenised for `codec` at the sizes of `cfg.data` (a mosaic.config.Config;
    only its samples with k <= max_k if given), checked up front against the model's reference limit."""
    spec = TokenSpec((cfg.data.target_size,) * 2, (cfg.data.ref_size,) * 2, codec.downsample, codec.patch)
    ds = MultiSubjectDataset(root, spec, strict=cfg.data.strict, max_k=max_refs)
    if max_k is not None:
        ds.records = [r for r in ds.records if int(r["k"]) <= max_k]
        if not ds.records:
            raise DataError(f"{Path(root) / 'manifest.jsonl'}: no sample with k <= {max_k} (data.curriculum max_k)")
    too_many = [r for r in ds.records if int(r["k"]) > max_refs]
    if too_many:
        raise DataError(f"{Path(root) / 'manifest.jsonl'}: sample {too_many[0]['id']} field k = {too_many[0]['k']} "
                        f"exceeds the model's limit of {max_refs} references ({len(too_many)} such samples); "
                        f"raise model.max_refs or filter the dataset")
    return ds
