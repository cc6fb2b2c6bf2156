"""Workflow adapter: the model-side work of one (training, evaluation set): samples and held-out attention.

    python workflow/scripts/sample.py --run RUN (--dataset DIR | --benchmark B --scenario S
        [--benchmarks-root DIR] [--limit N]) --seeds 0 1 --steps 8 [--ref-preprocess upstream|fit]
        [--mechanism] --out DIR

Samples every prompt with `mosaic.inference.sampler.sample_run` (images, per-reference attention maps and the
manifest `mosaic eval` reads). With --mechanism (a --dataset with correspondences) it also
measures the run's held-out alignment accuracy and leakage (mosaic.inference.mechanism, teacher-forced) and
writes mechanism.json and mechanism.png into the folder: the model is loaded once
(`mosaic.inference.sampler.Sampler.from_run`) for both. The folder appears complete (mosaic.infra.runfolder.atomic_dir).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch


def mechanism(sampler, run: Path, data: Path) -> tuple[dict, list, str]:
    """The held-out mechanism metrics (shares in [0, 1]) of a loaded run on a dataset with correspondences
    (mosaic.inference.mechanism.evaluate, teacher-forced): (results, figure rows, figure title)."""
    from mosaic.inference import mechanism as mech
    from mosaic.config import load_config
    from mosaic.data.dataset import load_dataset
    from mosaic.infra.runfolder import CONFIG_FILE

    cfg = load_config(run / CONFIG_FILE)
    ds = load_dataset(str(data), cfg, sampler.parts.codec, sampler.model.max_refs)
    results, rows = mech.evaluate(sampler.parts, ds, cfg)
    t = cfg.eval.timesteps[len(cfg.eval.timesteps) // 2]
    return results, rows, f"{cfg.variant}, {data.name}\nteacher-forced, t={t:g}"


def write_mechanism(results: dict, rows: list, title: str, out: Path) -> None:
    """mechanism.json and, with figure rows, mechanism.png into the folder `out`."""
    from mosaic.inference import mechanism as mech

    (out / "mechanism.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    if rows:
        mech.draw_figure(rows, out / "mechanism.png", title)


def main(argv: list[str] | None = None) -> int:
    from mosaic.infra.runfolder import atomic_dir
    from mosaic.inference.sampler import Sampler, Sampling, benchmark_requests, dataset_requests, sample_run

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
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance on the prompt (1: off)")
    p.add_argument("--ref-preprocess", choices=["upstream", "fit"], default="upstream",
                   help="references: upstream MOSAIC's process_image, or a centre crop (mosaic.inference.sampler)")
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
    sampler = Sampler.from_run(args.run, ref_preprocess=args.ref_preprocess)  # the one model load of this job
    measured = mechanism(sampler, args.run, args.dataset) if args.mechanism else None
    with atomic_dir(args.out, overwrite=True) as tmp:  # the sample folder appears with its mechanism files
        sample_run(sampler, requests, args.seeds, tmp, Sampling(args.steps, cfg_scale=args.cfg_scale, attention=True),
                   overwrite=True)
        if measured is not None:
            write_mechanism(*measured, tmp)
    print(f"wrote {len(requests) * len(args.seeds)} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
