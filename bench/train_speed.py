"""Training speed of the tiny profile on this machine: lora mode (SCAL + MDL) vs base mode, K references.

Runs the real trainer (DeepSpeed ZeRO-2, MLflow into a temporary sqlite store) on a synthetic
dataset with exactly K references per sample and prints the median `train/step_time` it logged
(first steps excluded: warm-up) side by side.

    python bench/train_speed.py [--flavour tiny] [--k 4] [--steps 30] [--batch-size 1]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from mlflow import MlflowClient

from mosaic.config import load_config
from mosaic.data.synthetic import generate_dataset
from mosaic.train import train

WARMUP = 5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flavour", default="tiny")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=1)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate_dataset(tmp / "data", 16, 0, "train", args.k, args.k)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        for mode in ("lora", "base"):
            result = train(load_config(None, [
                f"data.train={data}", f"model.flavour={args.flavour}", f"train.mode={mode}",
                f"train.output_dir={tmp / mode}", f"train.steps={args.steps}", f"train.batch_size={args.batch_size}",
                "train.checkpoint_every=0", "eval.enabled=false", f"tracking.tracking_uri={uri}",
                f"tracking.experiment={mode}"]))
            times = [m.value for m in MlflowClient(uri).get_metric_history(result.run_id, "train/step_time")][WARMUP:]
            rows.append((mode, statistics.median(times)))
    print(f"\nflavour={args.flavour} K={args.k} batch={args.batch_size} steps={args.steps} (median of the last "
          f"{args.steps - WARMUP}), torch threads={torch.get_num_threads()}")
    print(f"{'mode':<6} {'s/step':>8} {'steps/s':>8}")
    for mode, t in rows:
        print(f"{mode:<6} {t:8.3f} {1 / t:8.2f}")
    print(f"lora / base step time: {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
