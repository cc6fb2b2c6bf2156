"""`python -m metrics.tiny_evaluators OUT`: train and check the tiny-world CLIP and DINO into OUT.

Why it exists: the workflow's `tiny_evaluators` rule runs it once per results folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mosaic.data.synthetic import world_config

from . import EvaluatorSettings, train_evaluators


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metrics.tiny_evaluators", description=train_evaluators.__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--clip-steps", type=int, default=EvaluatorSettings.clip_steps)
    p.add_argument("--dino-steps", type=int, default=EvaluatorSettings.dino_steps)
    p.add_argument("--shape-steps", type=int, default=EvaluatorSettings.shape_steps,
                   help="the places world's shape classifier")
    p.add_argument("--seed", type=int, default=EvaluatorSettings.seed)
    p.add_argument("--n-train", type=int, default=EvaluatorSettings.n_train,
                   help="train-split samples rendered for training")
    p.add_argument("--world", default="blobs", help="the synthetic world (mosaic.data.synthetic.WORLDS)")
    p.add_argument("--target-size", type=int, default=96, help="target image side in px (the data config's)")
    p.add_argument("--ref-size", type=int, default=48, help="reference image side in px (the data config's)")
    p.add_argument("--max-seconds", type=float, help="cap on each trainer's wall time")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    cfg = world_config(a.world, target_size=a.target_size, ref_size=a.ref_size)
    settings = EvaluatorSettings(clip_steps=a.clip_steps, dino_steps=a.dino_steps, shape_steps=a.shape_steps,
                                 seed=a.seed, n_train=a.n_train, max_seconds=a.max_seconds)
    train_evaluators(a.out, settings, cfg=cfg, overwrite=a.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
