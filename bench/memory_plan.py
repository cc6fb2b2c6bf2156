"""The memory table of docs/paper_profile.md: `mosaic plan` on the paper profile's LoRA training config.

The training config is the one the workflow gives every paper LoRA training (workflow/config/paper.yaml:
training.common, then training.lora, then the data sizes; the method's loss weights change no memory
term), with K = 4 references (the paper trains on train_k4). Prints the table and the check against
the H100 peaks of /work/shared/gpu-notes.md. No weights, no GPU.
Usage: python bench/memory_plan.py [--profile workflow/config/paper.yaml] [--refs 4]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from mosaic import memory_plan as plan
from mosaic.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def profile_overrides(profile: Path) -> list[str]:
    """`--set` items of the profile's LoRA training, as workflow/rules/common.smk's train_overrides builds them."""
    p = yaml.safe_load(profile.read_text())
    t = p["training"]
    ov = {**t["common"], **t["lora"], "data.train": "unused-by-plan",
          "data.target_size": p["data"]["target_size"], "data.ref_size": p["data"]["ref_size"]}
    ov.pop("model.weights", None)  # a placeholder path on the cluster; the plan builds on the meta device
    return [f"{k}={json.dumps(v)}" for k, v in ov.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, default=ROOT / "workflow" / "config" / "paper.yaml")
    ap.add_argument("--refs", type=int, default=4)
    a = ap.parse_args()
    cfg = load_config(None, profile_overrides(a.profile))
    p = plan.make_plan(cfg, a.refs)
    print(plan.describe(p, cfg), "\n")
    print(plan.table(p), "\n")
    print(plan.reference_check(cfg))


if __name__ == "__main__":
    main()
