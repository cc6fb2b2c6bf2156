"""Workflow adapter: the metrics config of every evaluation (`mosaic eval --config`).

    python workflow/scripts/metrics_config.py (--base FILE | --profile paper) --overrides JSON --out FILE

The base is the tiny-world evaluators' config (written by metrics.tiny_evaluators) or a metrics.config
profile; the workflow config's metrics.config sections are merged over it (metrics.config.merge).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from metrics.config import load_config, merge
    from mosaic.infra.artefacts import check_artefact
    from mosaic.infra.runfolder import atomic_write

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    base = p.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", type=Path)
    base.add_argument("--profile")
    p.add_argument("--overrides", default="{}", help="JSON: metric section -> keys")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    if args.base:
        check_artefact(args.base.parent)  # shipped evaluators: refused if their bytes disagree with provenance.json
    cfg = load_config(args.base, None) if args.base else load_config(None, args.profile)
    cfg = merge(cfg, json.loads(args.overrides))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(cfg, indent=2, sort_keys=True))
    print(f"wrote {args.out}: {', '.join(sorted(cfg))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
