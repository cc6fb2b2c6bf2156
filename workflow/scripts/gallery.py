"""Workflow adapter: the comparison gallery of the studies' evaluation runs (workflow.lib.gallery).

    python workflow/scripts/gallery.py --store results/mlflow --generation G --results results \
        --experiments ablation scaling --methods JSON --out results/gallery/index.html

--methods: the config's method names in order (the gallery's order of images in a row).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from mosaic.infra.tracking.store import check_generation, store_uri
    from workflow.lib import gallery

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--generation", required=True, help="the store generation the workflow planned for")
    p.add_argument("--results", required=True, type=Path, help="the results folder (the images' root)")
    p.add_argument("--experiments", required=True, nargs="+", help="the studies whose evaluation runs it shows")
    p.add_argument("--methods", default="[]", help="JSON: the method names in the config's order")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    check_generation(args.store, args.generation)
    rows = gallery.build(store_uri(args.store), args.experiments, args.store, args.results, args.out,
                         json.loads(args.methods))
    print(gallery.summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
