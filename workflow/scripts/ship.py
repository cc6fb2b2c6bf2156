"""Workflow adapter: copy the DAG's trained base and evaluators into the shipped artefact folder.

    python workflow/scripts/ship.py --base RUN_DIR --evaluators DIR --out FOLDER --command CMD --record JSON

FOLDER gets base/ (the base run's transformer), evaluators/ and provenance.json (mosaic.infra.artefacts.ship:
the command, the workflow settings in --record, the base run's resolved config, its steps and seed,
the git sha, package versions and each file's sha256).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import yaml

    from mosaic.infra.artefacts import ship
    from mosaic.infra.runfolder import BASE_DIR, CONFIG_FILE

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, type=Path, help="the base model's run folder")
    p.add_argument("--evaluators", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--command", required=True, help="the command that made them (recorded)")
    p.add_argument("--record", default="{}", help="JSON: the workflow settings that made them (recorded)")
    a = p.parse_args(argv)
    run_cfg = yaml.safe_load((a.base / CONFIG_FILE).read_text())
    validation = json.loads((a.evaluators / "validation.json").read_text())
    out = ship({"base": a.base / BASE_DIR, "evaluators": a.evaluators}, a.out, a.command,
               {**json.loads(a.record), "base_run": run_cfg},
               steps={"base": run_cfg["train"]["steps"], "clip": validation.get("clip_steps"),
                      "dino": validation.get("dino_steps")},
               seed={"base": run_cfg["train"]["seed"], "evaluators": validation.get("seed")})
    print(f"shipped {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
