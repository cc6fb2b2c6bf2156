"""The images that bound an image metric on a synthetic test split: the real targets (the ceiling) and
the same scenes with no subject drawn, their exact backgrounds (the floor).

Why it exists: a table of DINO, CLIP-I or CLIP-T values means little without the scale they live on in
this world. The bounds are written as a sample folder with a manifest (mosaic.inference.sampler.write_outputs),
so the metrics score them exactly as they score a method's images, one image per (scene, seed): the
images do not depend on the seed, so their seed-to-seed spread is zero.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.records import read_manifest, read_metadata
from ..data.synthetic import SyntheticConfig, background_only
from .sampler import Request, dataset_requests, write_outputs

BOUNDS = ("ceiling", "floor")


def _synthetic_config(root: Path) -> SyntheticConfig:
    cfg = read_metadata(root).get("config") or {}
    return SyntheticConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()
                              if k in SyntheticConfig.__dataclass_fields__})


def bound_image(root: Path, rec: dict, bound: str, cfg: SyntheticConfig) -> np.ndarray:
    """The ceiling (the record's target) or the floor (its background, regenerated from its seed) of one record."""
    if bound == "ceiling":
        return np.asarray(Image.open(root / rec["target"]).convert("RGB"))
    m = rec.get("meta") or {}
    missing = [k for k in ("seed", "split", "index") if k not in m]
    if missing:
        raise ValueError(f"{root / 'manifest.jsonl'}: record {rec['id']!r} field meta lacks {missing}: the floor "
                         "needs a synthetic scene's seed, split and index")
    return background_only(m["seed"], m["split"], m["index"], rec["k"], cfg)


def write_bounds(dataset: str | os.PathLike, bound: str, seeds: list[int], out: str | os.PathLike,
                 overwrite: bool = False, method: str = "") -> Path:
    """A sample folder of the bound's images for every record of a synthetic `dataset` and seed."""
    if bound not in BOUNDS:
        raise ValueError(f"bound {bound!r} is not one of {BOUNDS}")
    root = Path(dataset).resolve()
    recs = {r["id"]: r for r in read_manifest(root)}
    cfg = _synthetic_config(root)
    requests: list[Request] = dataset_requests(root)

    def generate(req: Request, seed: int):
        return bound_image(root, recs[req.id], bound, cfg), None
    info = {"variant": bound, "dataset": str(root)}
    return write_outputs(generate, requests, seeds, out, method or bound, {"model": info, "settings": {"bound": bound}},
                         overwrite)


def run(args: argparse.Namespace) -> int:
    """`mosaic sample --bound ceiling|floor --dataset DATASET`."""
    if not args.dataset:
        raise ValueError("--bound needs --dataset (a synthetic split: its targets and backgrounds)")
    out = write_bounds(args.dataset, args.bound, args.seeds, args.out, args.overwrite, args.method or "")
    print(f"wrote the {args.bound} images of {args.dataset} to {out}")
    return 0
