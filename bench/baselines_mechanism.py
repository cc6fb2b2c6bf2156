"""Mechanism check of the controlled baselines in the tiny world: does the paper's ordering reproduce?

The paper's claim: methods that rely on global feature matching blend identities and leak
attributes as K grows, while MOSAIC's correspondence supervision holds. Here every method is
trained on the same tiny base transformer, data, trainer and step budget, then measured on
held-out val splits with exactly K = 2, 4 and 6 subjects per sample:

- alignment accuracy: share of annotated reference points whose argmax target token is within
  1 token of the truth (mosaic.inference.mechanism, teacher-forced on noised val targets, t = 0.25/0.5/0.75);
- leakage: share of each reference's target attention inside the other subjects' masks.

Methods: mosaic (SCAL + MDL, paper preset), omnicontrol, uno, dreamo, xverse (baselines/controlled).
The base transformer is pre-trained once (text-to-image); every method then trains its LoRA (and
extension) for --steps on a mixed-K train split (K = 1..6), for each seed. With --evaluators
(a folder written by `python -m metrics.tiny_evaluators`), it also samples --n-images val prompts per K
and scores them with the tiny-world CLIP-I / DINO / CLIP-T.

    python bench/baselines_mechanism.py --out runs/baselines-mechanism [--seeds 3] [--steps 300]

Finished runs and evaluations are reused when rerun with the same --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mosaic.config import load_config
from mosaic.data.synthetic import generate_dataset
from mosaic.infra.runfolder import LORA_FILE, atomic_write
from mosaic.train import train

METHODS = ("mosaic", "omnicontrol", "uno", "dreamo", "xverse")
KS = (2, 4, 6)


def method_config(method: str, overrides: list[str]):
    if method == "mosaic":
        return load_config(None, [*overrides, "variant=mosaic", "loss.preset=paper"])
    from baselines.registry import get_baseline

    return get_baseline(method).config(None, overrides)


def mechanism(run: Path, val: Path) -> dict[str, float]:
    """mosaic.inference.mechanism.evaluate of a finished run on one val split."""
    from mosaic.inference import mechanism as mech
    from mosaic.inference.sampler import Sampler
    from mosaic.data.dataset import load_dataset

    s = Sampler.from_run(run, "cpu")
    cfg = load_config(run / "config.yaml")
    ds = load_dataset(str(val), cfg, s.parts.codec, s.model.max_refs)
    results, _ = mech.evaluate(s.parts, ds, cfg)
    return results


def reference_shares(val: Path) -> dict[str, tuple[float, float, float]]:
    """(leakage, own share, subject leakage) of two attention-free maps on a val split, with mosaic.inference.mechanism's definitions:
    a map uniform over the target, and a map uniform over the union of all subjects' masks (it attends to
    "the foreground", to no subject in particular). A method is subject-specific where it beats the second."""
    from mosaic.data.dataset import collate
    from mosaic.inference.attention_scores import mask_shares, subject_leakage
    from mosaic.model import build_codec
    from mosaic.data.dataset import load_dataset

    ds = load_dataset(str(val), load_config(None, ["data.train=unused"]), build_codec("tiny"), 6)
    b = collate([ds[i] for i in range(len(ds))])
    masks = b["token_masks"].flatten(2)
    fg = (masks & b["ref_mask"][..., None]).any(1, keepdim=True).float().expand(masks.shape)
    valid = b["point_mask"].any(-1)
    out = {}
    for name, a in (("uniform", torch.ones(masks.shape)), ("foreground", fg)):
        leak, own = mask_shares(a, masks, b["ref_mask"], valid)
        out[name] = (float(leak.mean()), float(own.mean()), float(subject_leakage(leak, own).mean()))
    return out


def image_metrics(run: Path, val: Path, evaluators: Path, n: int, steps: int, out: Path) -> dict[str, float]:
    from metrics.config import load_config as metrics_config
    from metrics.evaluate import AGGREGATE, evaluate_folder
    from mosaic.inference.sampler import Sampling, dataset_requests, sample_run

    import pandas as pd

    folder = sample_run(run, dataset_requests(val)[:n], [0], out, Sampling(steps), overwrite=True)
    cfg = metrics_config(evaluators / "metrics_config.json", None)
    cfg = {k: v for k, v in cfg.items() if k in ("clip_i", "clip_t", "dino")}
    agg = pd.read_csv(evaluate_folder(folder, cfg) / AGGREGATE)
    agg = agg[agg.statistic.str.startswith("mean over (image") | agg.statistic.eq("mean over images")]
    return {f"img/{m}": float(v) for m, v in zip(agg.metric, agg.value)}


def cached(path: Path, compute) -> dict[str, float]:
    """The JSON at `path`, or compute() written there (atomically) first."""
    if not path.exists():
        atomic_write(path, json.dumps(compute(), indent=2))
    return json.loads(path.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--n-val", type=int, default=32)
    p.add_argument("--base-steps", type=int, default=600)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--evaluators", type=Path,
                   help="tiny-world evaluators folder (python -m metrics.tiny_evaluators) for the image metrics")
    p.add_argument("--n-images", type=int, default=8)
    p.add_argument("--sample-steps", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    train_data = out / "data-train"
    if not train_data.exists():
        generate_dataset(train_data, args.n_train, 0, "train", 1, 6)
    vals = {k: out / f"data-val-k{k}" for k in KS}
    for k, path in vals.items():
        if not path.exists():
            generate_dataset(path, args.n_val, 0, "val", k, k)
    common = [f"data.train={train_data}", "data.val=null", "model.flavour=tiny", "model.max_refs=6",
              f"train.lr={args.lr}", f"train.batch_size={args.batch_size}", "train.checkpoint_every=0",
              f"tracking.tracking_uri=sqlite:///{(out / 'mlflow.db').resolve()}",
              "tracking.experiment=baselines-mechanism"]
    base = out / "base"
    if not (base / "transformer").exists():
        train(load_config(None, [*common, "variant=base", "train.mode=base", f"train.steps={args.base_steps}",
                                 f"train.output_dir={base}", "train.drop_text=0.1"]))
    print(f"data + base: {time.monotonic() - t0:.0f}s")

    results: dict[str, dict[int, list[dict[str, float]]]] = {m: {k: [] for k in KS} for m in args.methods}
    for seed in range(args.seeds):
        for method in args.methods:
            run = out / f"{method}-seed{seed}"
            t1 = time.monotonic()
            if not (run / LORA_FILE).exists():
                train(method_config(method, [*common, f"model.weights={base / 'transformer'}", f"train.seed={seed}",
                                             f"train.steps={args.steps}", f"train.output_dir={run}"]))
            for k, val in vals.items():
                res = cached(run / f"mechanism-k{k}.json", lambda: mechanism(run, val))
                if args.evaluators:
                    res.update(cached(run / f"images-k{k}.json", lambda: image_metrics(
                        run, val, args.evaluators, args.n_images, args.sample_steps, run / f"samples-k{k}")))
                results[method][k].append(res)
            print(f"{method} seed {seed}: {time.monotonic() - t1:.0f}s")
    (out / "results.json").write_text(json.dumps(results, indent=2))

    def cell(rows: list[dict[str, float]], key: str, scale: float = 100) -> str:
        v = [scale * r[key] for r in rows if key in r]
        if not v:
            return "-"
        return f"{statistics.mean(v):4.1f}+-{statistics.stdev(v) if len(v) > 1 else 0:3.1f}"

    print(f"\ntiny world: base {args.base_steps} steps, each method {args.steps} steps (lr {args.lr}, batch "
          f"{args.batch_size}, train K 1..6, {args.n_train} samples), {args.seeds} seeds, {args.n_val} val samples "
          f"per K; mean +- std over seeds, in %; total {time.monotonic() - t0:.0f}s")
    keys = [("mech/alignment_acc", "align"), ("mech/leakage", "leak"), ("mech/own_share", "own"),
            ("mech/subject_leakage", "subj.leak")]
    if args.evaluators:
        keys += [("img/CLIP-I", "CLIP-I"), ("img/DINO", "DINO"), ("img/CLIP-T", "CLIP-T")]
    print("method".ljust(12) + "".join(f"{name} K={k}".rjust(15) for _, name in keys for k in KS))
    for method, by_k in results.items():
        print(method.ljust(12) + "".join(cell(by_k[k], key, 100 if key.startswith("mech") else 1).rjust(15)
                                         for key, _ in keys for k in KS))
    refs = {k: reference_shares(val) for k, val in vals.items()}
    for name in ("uniform", "foreground"):
        print(f"({name})".ljust(12) + "-".rjust(15) * len(KS)
              + "".join(f"{100 * refs[k][name][i]:5.1f}".rjust(15) for i in (0, 1, 2) for k in KS))
    print("(uniform): a map uniform over the target; (foreground): uniform over the union of all subjects' masks. "
          "Chance alignment accuracy (a uniformly random argmax on the 12x12 grid) is at most 9/144 = 6%.")


if __name__ == "__main__":
    main()
