"""HPSv3 scored in its own environment (workflow/envs/hpsv3.yaml): a manifest in, evaluation-table rows out.

Why it exists apart from metrics.hps: it runs the whole evaluation engine (metrics.evaluate), which
imports metrics.hps to register the metric; kept in metrics.hps, the two modules imported each other.

    python -m metrics.hps_job MANIFEST OUT.csv --checkpoint HPSv3.safetensors [--device cuda] [--batch-size 16]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mosaic.infra.runfolder import atomic_file

from .evaluate import evaluate
from .manifest import read_items


def main(argv: list[str] | None = None) -> int:
    """HPSv3 in its own environment: score a manifest and write the evaluation table's rows."""
    p = argparse.ArgumentParser(prog="python -m metrics.hps_job", description=main.__doc__)
    p.add_argument("manifest", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=16)
    a = p.parse_args(argv)
    cfg = {"hpsv3": {"checkpoint": a.checkpoint, "device": a.device}}
    table, _, _ = evaluate(read_items(a.manifest), cfg, ["HPSv3"], batch_size=a.batch_size)
    with atomic_file(a.out) as tmp:
        table.to_csv(tmp, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
