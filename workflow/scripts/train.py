"""Workflow adapter: one training (mosaic.train) into a run folder with its own MLflow store.

    python workflow/scripts/train.py --out RUN_DIR [--baseline NAME] --set key=value ...

The run logs to <RUN_DIR>/mlflow.db (per-step metrics, params, artifacts); the workflow's
mlflow_log job copies that run into the study stores, so deleting those never loses it. A
controlled baseline (--baseline) resolves its config through its own class (its settings and
extension). Works under torchrun or the deepspeed launcher (which adds --local_rank).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--baseline", help="a controlled baseline of baselines.registry (its settings and extension)")
    p.add_argument("--set", dest="sets", nargs="*", action="extend", default=[], metavar="KEY=VALUE")
    args, _ = p.parse_known_args(argv)  # the deepspeed launcher appends --local_rank
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from mosaic.config import load_config
    from mosaic.train import train

    out = args.out.resolve()
    sets = [*args.sets, f"train.output_dir={out}", f"tracking.tracking_uri=sqlite:///{out / 'mlflow.db'}",
            "tracking.experiment=training"]
    if args.baseline:
        from baselines.registry import get_baseline

        cfg = get_baseline(args.baseline).config(None, sets)
    else:
        cfg = load_config(None, sets)
    result = train(cfg)
    print(f"{result.status}: {result.step} steps, run {result.run_id}, output {result.output}")
    return 0 if result.status == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
