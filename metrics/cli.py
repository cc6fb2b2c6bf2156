"""`mosaic eval`: score a folder of generated images described by a manifest (metrics.manifest)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="folder holding the generated images and their manifest")
    p.add_argument("--manifest", help="manifest file name in the folder, or an absolute path (default manifest.jsonl)")
    p.add_argument("--config", help="metrics config (YAML/JSON; sections at top level or under `metrics:`)")
    p.add_argument("--profile", choices=["paper"],
                   help="base profile the config overrides (default: paper without --config, none with it)")
    p.add_argument("--metrics", help="comma-separated metric names (default: every configured metric)")
    p.add_argument("--out", help="output folder (default FOLDER/eval)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--allow-missing", action="store_true",
                   help="a metric whose model or weights are missing gives NaN rows with the reason instead of failing")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `mosaic --help` imports this module; evaluate loads torch and pandas
    import pandas as pd

    from .config import load_config
    from .evaluate import AGGREGATE, evaluate_folder, select
    from .registry import MetricUnavailable

    profile = args.profile or (None if args.config else "paper")
    cfg = load_config(args.config, profile)
    names = [n.strip() for n in args.metrics.split(",") if n.strip()] if args.metrics else None
    if names is not None:
        try:
            select(cfg, names)
        except ValueError as e:
            raise ValueError(f"--metrics: {e}") from None
    try:
        out = evaluate_folder(args.folder, cfg, names, args.manifest, args.out, args.batch_size,
                              "nan" if args.allow_missing else "raise")
    except MetricUnavailable as e:
        raise ValueError(str(e)) from None
    agg = pd.read_csv(out / AGGREGATE)
    with pd.option_context("display.width", 160, "display.max_columns", 8):
        print(agg[["method", "label", "statistic", "value", "n", "n_nan"]].to_string(index=False))
    print(f"wrote {out}")
    return 0
