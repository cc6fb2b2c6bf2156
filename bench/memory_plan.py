"""The memory table of docs/paper_profile.md: `mosaic plan` on the paper profile's LoRA training config.

The training config is the one the workflow's plan gives the paper's MOSAIC LoRA training
(workflow/lib/plan.py: training.common, training.lora, the method's loss weights, the data sizes),
with K = 4 references (the paper trains on train_k4). Prints the table and the check against
the H100 peaks of /work/shared/gpu-notes.md. No weights, no GPU.
Usage: python bench/memory_plan.py [--profile workflow/config/paper.yaml] [--refs 4]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from mosaic import memory_plan as plan
from mosaic.config import load_config
from workflow.lib.plan import Plan

ROOT = Path(__file__).resolve().parents[1]


def profile_overrides(profile: Path, refs: int) -> list[str]:
    """`--set` items of the profile's MOSAIC LoRA training on train_k<refs>, as the workflow's plan gives them
    (workflow/lib/plan.py), without model.weights: a placeholder path on the cluster; the plan builds on the
    meta device."""
    ov = Plan(yaml.safe_load(profile.read_text()), ROOT).train_overrides("mosaic", refs, 0)
    return [o for o in ov if not o.startswith("model.weights=")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, default=ROOT / "workflow" / "config" / "paper.yaml")
    ap.add_argument("--refs", type=int, default=4)
    a = ap.parse_args()
    cfg = load_config(None, profile_overrides(a.profile, a.refs))
    p = plan.make_plan(cfg, a.refs)
    print(plan.describe(p, cfg), "\n")
    print(plan.table(p), "\n")
    print(plan.reference_check(cfg))


if __name__ == "__main__":
    main()
