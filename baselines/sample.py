"""`mosaic sample --baseline NAME`: generate a benchmark's images with any registered baseline.

Why it exists: an official release (or a folder of an external system's images) is sampled
through its own `generate`, but written in the same output format as a MOSAIC run
(mosaic.inference.sampler.write_outputs), so the metrics suite scores every method the same way.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import yaml

from mosaic.inference.sampler import Request, requests_from_args, write_outputs

from .registry import get_baseline


def sample_baseline(name: str, requests: list[Request], seeds: list[int], out: str | os.PathLike,
                    method: str = "", overwrite: bool = False, benchmark: str | None = None, **kwargs) -> Path:
    """Sample a registered baseline (e.g. an official release, in its own environment) into `out`; on a
    `benchmark` whose protocol the release fixes its own seeds for (UNO on DreamBench: 3407 + j), those seeds."""
    cls = get_baseline(name)
    seeds = cls.protocol_seeds(benchmark, seeds) if hasattr(cls, "protocol_seeds") else list(seeds)
    b = cls(**kwargs)

    def generate(req: Request, seed: int):
        img = b.generate(req.prompt, req.references, seed, phrases=req.phrases or None)
        return np.asarray(img.convert("RGB")), None
    info = {"baseline": name, **{k: str(v) for k, v in kwargs.items()}}
    settings = {**getattr(b, "settings", {}), **({"protocol": b.PROTOCOL} if getattr(b, "PROTOCOL", None) else {}),
                "seeds": list(seeds)}
    meta = {"model": info, "settings": settings}
    return write_outputs(generate, requests, seeds, out, method or name, meta, overwrite)


def run(args: argparse.Namespace) -> int:
    """The --baseline branch of `mosaic sample` (arguments: mosaic.inference.sampler.add_arguments)."""
    kwargs = {}
    for item in args.baseline_arg:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--baseline-arg {item!r}: expected KEY=VALUE")
        kwargs[key] = yaml.safe_load(raw)
    requests = requests_from_args(args)
    out = sample_baseline(args.baseline, requests, args.seeds, args.out, args.method or "", args.overwrite,
                          args.benchmark, **kwargs)
    print(f"wrote {len(requests) * len(args.seeds)} images to {out}")
    return 0
