"""Which tiny base generates the tiny world from text? Trains base arms and scores their samples.

    OMP_NUM_THREADS=1 python bench/base_design.py --data results/data/synthetic/train_k4 \
        --test results/data/synthetic/test_k2 --evaluators results/evaluators --out runs/base_design \
        --arm v:prediction=velocity --arm x0:prediction=x0 --steps 1500 --batch 4 --cfg 1 3

Each arm trains a text-to-image base (`mosaic train`, train.mode=base) with the given flavour
prediction ("velocity" or "x0"), transformer sizes (`flavour.num_attention_heads=8`, ...) and trainer
overrides (`key=value`, e.g. train.lr=3e-4), then samples
every test prompt without references (mosaic.inference.sampler.sample_run: 28 Euler steps, seed 0, each --cfg
scale) and prints the
tiny-world CLIP-T of its samples beside the real targets' (the ceiling), with the training time.
Contact sheets: <out>/<arm>/sheet_cfg<s>.png. Timings are of this machine, one run.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
from PIL import Image

from metrics.config import load_config as load_metrics_config
from metrics.evaluate import evaluate
from metrics.manifest import Item, read_items
from mosaic.config import load_config
from mosaic.data.records import read_manifest
from mosaic.model.flavours import FLAVOURS
from mosaic.infra.runfolder import MANIFEST_FILE, atomic_file
from mosaic.inference.sampler import Request, Sampler, Sampling, dataset_requests, sample_run
from mosaic.train import train


def flavour_for(prediction: str, transformer: dict[str, int], base: str = "tiny") -> str:
    """The tiny flavour with this prediction and these transformer kwargs, registered for this process if it
    is not the stock one."""
    stock = FLAVOURS[base]
    if stock.prediction == prediction and not transformer:
        return base
    name = "-".join([base, prediction, *(f"{k}{v}" for k, v in sorted(transformer.items()))])
    if name not in FLAVOURS:
        FLAVOURS.add(name, dataclasses.replace(stock, name=name, prediction=prediction,
                                               transformer={**stock.transformer, **transformer}))
    return name


def clip_t(items: list[Item], metrics_cfg: dict) -> float:
    _, agg, _ = evaluate(items, metrics_cfg, ["CLIP-T"])
    return float(agg.loc[agg.metric == "CLIP-T", "value"].iloc[0])


def sheet(images: list[np.ndarray], path: Path, cols: int = 8) -> None:
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    canvas = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * (h + 2): r * (h + 2) + h, c * (w + 2): c * (w + 2) + w] = im
    with atomic_file(path) as tmp:
        Image.fromarray(canvas).save(tmp)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="training split (text-to-image targets)")
    p.add_argument("--test", required=True, help="test split whose prompts are sampled")
    p.add_argument("--evaluators", required=True, help="tiny-world evaluators folder (python -m metrics.tiny_evaluators)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--arm", action="append", required=True,
                   help="NAME:prediction=x0,train.lr=3e-4,... (repeatable)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--sample-steps", type=int, default=28)
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0])
    a = p.parse_args()
    metrics_cfg = load_metrics_config(Path(a.evaluators) / "metrics_config.json", None)
    test = Path(a.test).resolve()
    recs = read_manifest(test)
    ceiling = clip_t([Item(r["id"], test / r["target"], r["prompt"], []) for r in recs], metrics_cfg)
    print(f"real targets: CLIP-T {ceiling:.1f} ({len(recs)} prompts of {test.name})")
    prompts = [Request(r.id, r.prompt, []) for r in dataset_requests(test)]
    for arm in a.arm:
        name, _, spec = arm.partition(":")
        kv = dict(item.split("=", 1) for item in spec.split(",") if item)
        shape = {k.removeprefix("flavour."): int(kv.pop(k)) for k in list(kv) if k.startswith("flavour.")}
        flavour = flavour_for(kv.pop("prediction", "velocity"), shape)
        out = a.out / name
        cfg = load_config(None, [f"data.train={a.data}", "data.val=null", "train.mode=base", f"model.flavour={flavour}",
                                 f"train.steps={a.steps}", f"train.batch_size={a.batch}", "train.drop_text=0.1",
                                 "train.checkpoint_every=0", "tracking.enabled=false", f"train.output_dir={out}",
                                 "variant=" + name, *[f"{k}={v}" for k, v in kv.items()]])
        t0 = time.perf_counter()
        train(cfg)
        seconds = time.perf_counter() - t0
        s = Sampler.from_run(out)
        for scale in a.cfg:
            folder = sample_run(s, prompts, [0], out / f"samples_cfg{scale:g}",
                                Sampling(a.sample_steps, cfg_scale=scale), overwrite=True)
            items = read_items(folder / MANIFEST_FILE)
            sheet([np.asarray(Image.open(it.image).convert("RGB")) for it in items], out / f"sheet_cfg{scale:g}.png")
            score = clip_t(items, metrics_cfg)
            print(f"{name} ({flavour}, {kv or 'defaults'}): trained {a.steps} x {a.batch} in {seconds:.0f} s; "
                  f"cfg {scale:g}: CLIP-T {score:.1f} = {100 * score / ceiling:.0f}% of the real targets'", flush=True)


if __name__ == "__main__":
    main()
