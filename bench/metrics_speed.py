"""Metric throughput on CPU with the tiny models, and the reference-embedding cache hit rate.

1. Images per second for each metric alone, at batch 16, on synthetic 96 px targets with two
   references each (CLIP-I/T, DINO, IP-Sim with ground-truth masks, HPSv2.1 on a tiny
   architecture, the mechanism metrics) and on the 20 XVerseBench faces (ID-Sim, dlib).
   Random tiny weights: the cost, not the values, is what is measured.
2. The reference cache over a DreamBench-sized run: every DreamBench prompt (single and
   multi, UNO protocol) x `--seeds` images, CLIP-I, with a tiny synthetic image standing in
   for each generated one; hit rate = reference lookups served from the cache.

    .venv/bin/python bench/metrics_speed.py [--n 64] [--seeds 4] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metrics.evaluate import evaluate  # noqa: E402
from metrics.tiny_evaluators.clip_training import CLIP_CFG, new_clip, save_clip  # noqa: E402
from metrics.tiny_evaluators.dino_training import new_vit, save_dino  # noqa: E402
from metrics.manifest import Item, RefInput, parse_record  # noqa: E402
from metrics.registry import Context  # noqa: E402
from mosaic.data.benchmarks import benchmark_record  # noqa: E402
from mosaic.data.synthetic import generate_sample  # noqa: E402


def synthetic_items(folder: Path, n: int) -> list[Item]:
    items = []
    for i in range(n):
        s = generate_sample(0, "test", i, 2)
        d = folder / f"s{i}"
        d.mkdir()
        Image.fromarray(s.target).save(d / "target.png")
        refs = []
        for k, r in enumerate(s.references):
            Image.fromarray(r.image).save(d / f"ref{k}.png")
            Image.fromarray(s.masks[k].astype(np.uint8) * 255).save(d / f"mask{k}.png")
            refs.append(RefInput(d / f"ref{k}.png", word=r.phrase.split()[-1], phrase=r.phrase, category="object",
                                 mask=d / f"mask{k}.png"))
        grid = np.zeros((2, 12, 12), bool)
        grid[0, :6], grid[1, 6:] = True, True
        rng = np.random.default_rng(i)
        np.savez(d / "attn.npz", token_masks=grid, **{f"attn{k}": rng.random((32, 144)) for k in range(2)},
                 **{f"gt{k}": rng.integers(0, 144, 32) for k in range(2)})
        items.append(Item(s.id, d / "target.png", s.prompt, refs, attention=d / "attn.npz"))
    return items


def throughput(items, cfg, metric, batch=16) -> float:
    evaluate(items[:batch], cfg, [metric], batch_size=batch)  # warm-up: model load, first batch
    t = time.perf_counter()
    evaluate(items, cfg, [metric], batch_size=batch)
    return len(items) / (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64, help="synthetic images per throughput run")
    p.add_argument("--seeds", type=int, default=4, help="images per DreamBench prompt in the cache run")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_clip(new_clip(0), tmp / "clip")
        save_dino(new_vit(0), tmp / "dino")
        (tmp / "hps").mkdir()
        (tmp / "hps" / "open_clip_config.json").write_text(json.dumps({"model_cfg": CLIP_CFG}))
        torch.save({"state_dict": new_clip(1).state_dict()}, tmp / "hps.pt")
        clip = {"model": f"local-dir:{tmp / 'clip'}"}
        cfg = {"clip_i": clip, "clip_t": clip, "dino": {"model": f"local-dir:{tmp / 'dino'}"},
               "ip_sim": {"localiser": "masks"}, "id_sim": {"protocol": "dlib"}, "mechanism": {},
               "hpsv21": {"model": f"local-dir:{tmp / 'hps'}", "checkpoint": str(tmp / "hps.pt")}}
        items = synthetic_items(tmp, a.n)
        print(f"CPU threads {a.threads}, batch 16, tiny random models; {a.n} synthetic 96 px images, 2 references each")
        print(f"{'metric':<20} {'images/s':>9}")
        for metric in ("CLIP-I", "CLIP-T", "DINO", "IP-Sim", "HPSv2.1", "alignment accuracy", "leakage"):
            print(f"{metric:<20} {throughput(items, cfg, metric):9.1f}")
        humans = sorted((ROOT.parent / "shared" / "benchmarks" / "xversebench" / "human").glob("*.jpg"))
        if humans:
            faces = [Item(p.name, p, "a person", [RefInput(humans[(i + 1) % len(humans)], category="human")])
                     for i, p in enumerate(humans)]
            print(f"{'ID-Sim (dlib)':<20} {throughput(faces, cfg, 'ID-Sim'):9.1f}   ({len(humans)} XVerseBench faces, "
                  f"~{int(np.mean([Image.open(h).width for h in humans]))} px)")

        from mosaic.data.benchmarks import load_benchmark

        stand_in = str(items[0].image)
        records = [benchmark_record(e, stand_in, "bench", seed)
                   for s in ("single", "multi") for e in load_benchmark("dreambench", s).entries
                   for seed in range(a.seeds)]
        run = [parse_record(r, tmp, f"record {i}") for i, r in enumerate(records)]
        ctx = Context(cfg)
        t = time.perf_counter()
        evaluate(run, cfg, ["CLIP-I"], batch_size=16, ctx=ctx)
        stats = next(v for k, v in ctx.cache_stats().items() if k.endswith("|references"))
        n_refs = sum(len(it.references) for it in run)
        print(f"\nDreamBench-sized run: {len(run)} images ({a.seeds} per prompt, single + multi), {n_refs} reference "
              f"lookups, {stats['misses']} unique references embedded")
        print(f"reference-embedding cache hit rate {stats['hit_rate']:.4f}  ({time.perf_counter() - t:.1f} s for CLIP-I)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
