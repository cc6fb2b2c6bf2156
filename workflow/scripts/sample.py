"""Workflow adapter: the model-side work of one (training, evaluation set): samples and held-out attention.

    python workflow/scripts/sample.py --run RUN (--dataset DIR | --benchmark B --scenario S
        [--benchmarks-root DIR] [--limit N]) --seeds 0 1 --steps 8 [--mechanism] --out DIR

Samples every prompt with `mosaic.sample.sample_run` (images, per-reference attention maps and the
manifest `mosaic eval` reads). With --mechanism (a --dataset with correspondences) it also
measures the run's held-out alignment accuracy and leakage (mosaic.mechanism, teacher-forced) and
writes mechanism.json and mechanism.png into the folder: the model is loaded once for both.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch


def mechanism(run: Path, data: Path, out: Path) -> None:
    """mechanism.json (shares in [0, 1]) and mechanism.png of a trained run on a dataset with correspondences."""
    from mosaic import mechanism as mech
    from mosaic.config import load_config
    from mosaic.sample import Sampler
    from mosaic.train import load_dataset

    s = Sampler.from_run(run)
    cfg = load_config(run / "config.yaml")
    ds = load_dataset(str(data), cfg, s.codec, s.model.max_refs)
    results, rows = mech.evaluate(s.model, s.codec, s.text_encoder, ds, cfg, s.device, s.dtype, s.extension)
    (out / "mechanism.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    if rows:
        t = cfg.eval.timesteps[len(cfg.eval.timesteps) // 2]
        mech.draw_figure(rows, out / "mechanism.png", f"{cfg.variant}, {data.name}\nteacher-forced, t={t:g}")


def main(argv: list[str] | None = None) -> int:
    from mosaic.sample import benchmark_requests, dataset_requests, sample_run

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", type=Path)
    src.add_argument("--benchmark", choices=["dreambench", "xversebench"])
    p.add_argument("--scenario", choices=["single", "multi"], default="multi")
    p.add_argument("--benchmarks-root")
    p.add_argument("--limit", type=int)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--mechanism", action="store_true", help="also the held-out mechanism metrics on --dataset")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.mechanism and args.dataset is None:
        p.error("--mechanism needs --dataset (a dataset with correspondences)")
    requests = (dataset_requests(args.dataset) if args.dataset
                else benchmark_requests(args.benchmark, args.scenario, args.benchmarks_root))
    requests = requests[: args.limit] if args.limit else requests
    with tempfile.TemporaryDirectory(dir=args.out.parent if args.out.parent.exists() else None) as tmp:
        if args.mechanism:
            mechanism(args.run, args.dataset, Path(tmp))
        sample_run(args.run, requests, args.seeds, args.out, steps=args.steps, attention=True, overwrite=True)
        for f in Path(tmp).iterdir():  # into the finished sample folder
            shutil.move(str(f), args.out / f.name)
    print(f"wrote {len(requests) * len(args.seeds)} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
