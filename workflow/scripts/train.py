"""Workflow adapter: one training (mosaic.train) into a run folder with its own MLflow store.

    python workflow/scripts/train.py --out RUN_DIR/done.json --inputs PATH... [--baseline NAME] --set key=value ...

The run lives in RUN_DIR (checkpoints, LoRA or base transformer, <RUN_DIR>/mlflow.db with its
per-step metrics, params and artifacts); the workflow's mlflow_log job copies that run into the
study stores, so deleting those never loses it. The job's Snakemake output is only the marker
`done.json`, written last: Snakemake deletes the outputs of a failed or incomplete job, and the
run folder must survive a pre-emption so the rerun resumes from its last checkpoint and reopens
the same MLflow run (mosaic.train.reset_stale_output decides between resuming and starting
afresh, from the config and a digest of --inputs). A controlled baseline (--baseline) resolves
its config through its own class. Works under torchrun or the deepspeed launcher (which adds
--local_rank).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="the marker written on success: RUN_DIR/done.json")
    p.add_argument("--inputs", nargs="*", default=[], type=Path, help="the data and weights the run reads")
    p.add_argument("--baseline", help="a controlled baseline of baselines.registry (its settings and extension)")
    p.add_argument("--set", dest="sets", nargs="*", action="extend", default=[], metavar="KEY=VALUE")
    args, _ = p.parse_known_args(argv)  # the deepspeed launcher appends --local_rank
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from mosaic.config import load_config
    from mosaic.infra.runfolder import atomic_write
    from mosaic.train import digest_inputs, reset_stale_output, train

    marker = args.out.resolve()
    out = marker.parent
    sets = [*args.sets, f"train.output_dir={out}", f"tracking.tracking_uri=sqlite:///{out / 'mlflow.db'}",
            "tracking.experiment=training"]
    if args.baseline:
        from baselines.registry import get_baseline

        cfg = get_baseline(args.baseline).config(None, sets)
    else:
        cfg = load_config(None, sets)
    if int(os.environ.get("RANK", 0)) == 0:
        reason = reset_stale_output(out, cfg, digest_inputs(args.inputs))
        print(f"starting afresh: {reason}" if reason else f"run folder {out}: resuming if it holds a checkpoint")
    result = train(cfg)
    print(f"{result.status}: {result.step} steps, run {result.run_id}, output {result.output}")
    if result.status != "finished":
        return 1
    if int(os.environ.get("RANK", 0)) == 0:
        atomic_write(marker, json.dumps({"run_id": result.run_id, "step": result.step, "output": str(result.output),
                                         "mechanism": result.mechanism}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
