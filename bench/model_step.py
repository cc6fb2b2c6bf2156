"""Model step time: the fused MOSAIC forward vs the per-branch reference form, side by side.

Forward + backward of the reference LoRA at the tiny profile sizes (text 24, target 12x12 tokens,
K references of 6x6 tokens), plus the base text-to-image step (full weights, no references) for scale.
Usage: python bench/model_step.py [--flavour tiny] [--batch 4] [--refs 4] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mosaic.model import LoraSpec, build_model
from mosaic.model.per_branch import per_branch_forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flavour", default="tiny")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--refs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = build_model(a.flavour, lora=LoraSpec(rank=16), max_refs=max(a.refs, 1))
    base = build_model(a.flavour, lora=None)  # base pre-training: all weights train, no references
    cfg, txt = m.transformer.config, m.flavour.text
    b, k, tg, rg = a.batch, a.refs, (12, 12), (6, 6)
    x = dict(target=torch.randn(b, 144, cfg.in_channels), refs=torch.randn(b, k, 36, cfg.in_channels),
             ref_mask=torch.ones(b, k, dtype=torch.bool), text=torch.randn(b, txt["max_length"], txt["dim"]),
             pooled=torch.randn(b, txt["pooled_dim"]), timestep=torch.rand(b))

    def step(fn):
        out = fn()
        out.square().mean().backward()

    arms = {
        "base (no refs)": lambda: base(x["target"], None, None, x["text"], x["pooled"], x["timestep"], target_grid=tg),
        "fused": lambda: m(**x, target_grid=tg, ref_grid=rg),
        "per-branch": lambda: per_branch_forward(m, **x, target_grid=tg, ref_grid=rg),
    }
    times = {}
    for name, fn in arms.items():
        step(fn)  # warm-up
        ts = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            step(fn)
            ts.append(time.perf_counter() - t0)
        times[name] = statistics.median(ts)
    print(f"{a.flavour}: B={b} K={k} threads={a.threads}, median of {a.repeats} forward+backward steps")
    for name, t in times.items():
        print(f"  {name:16s} {t * 1000:8.1f} ms   x{t / times['fused']:.2f} of fused")


if __name__ == "__main__":
    main()
