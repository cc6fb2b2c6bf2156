"""Speed of the synthetic world: 1,000 samples, K = 4, tiny profile (96 px target, 48 px references).

Prints the end-to-end time of `generate_dataset` (render + write to a temp dir) beside the
render-only time, so the write cost is the difference. Target: <= 30 s end to end on 2 CPU cores.

    .venv/bin/python bench/synthetic_speed.py [--n 1000] [--k 4]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mosaic.data.synthetic import SyntheticConfig, generate_dataset, generate_sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--k", type=int, default=4)
    args = ap.parse_args()
    cfg = SyntheticConfig()
    generate_sample(0, "train", 0, args.k, cfg)  # warm the identity pool and texture caches

    t0 = time.perf_counter()
    for i in range(args.n):
        generate_sample(0, "train", i, args.k, cfg)
    render = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate_dataset(Path(tmp) / "ds", args.n, 0, "train", args.k, args.k, cfg)
        total = time.perf_counter() - t0

    print(f"{args.n} samples, K={args.k}, target {cfg.target_size} px, refs {cfg.ref_size} px")
    print(f"{'stage':<22}{'seconds':>10}{'samples/s':>12}")
    for name, sec in [("render only", render), ("write (difference)", total - render),
                      ("render + write", total)]:
        print(f"{name:<22}{sec:>10.2f}{args.n / sec if sec > 0 else float('inf'):>12.1f}")
    print(f"target <= 30 s end to end: {'met' if total <= 30 else 'MISSED'}")


if __name__ == "__main__":
    main()
