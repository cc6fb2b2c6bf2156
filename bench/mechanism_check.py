"""Mechanism check in the tiny world: do SCAL and MDL do what the paper says they do?

Pre-trains the tiny base transformer once (text-to-image, no references), then trains the
reference LoRA on top of it for the variants none / scal / mdl / both over several seeds, all
with K references per sample, and prints the held-out alignment accuracy and leakage
(mosaic.inference.mechanism, on the val split) as mean +- std over seeds. Expected: SCAL raises the
alignment accuracy, MDL lowers the leakage.

Read the leakage columns together: plain leakage (mass on other subjects' tokens) also rises when
attention merely moves from the background onto the subjects, so compare variants on the subject
leakage (the share of the on-subject mass that lands on the wrong subjects; chance about (K-1)/K)
and the own share (chance: the subject's share of the target tokens).

    python bench/mechanism_check.py --out runs/mechanism [--base artefacts/tiny/base] [--seeds 3] [--k 4]

(a blobs-world bench: its base is the one shipped at 5f106b8, `git archive 5f106b8 artefacts/tiny | tar -x`)
        [--steps 300] [--set KEY=VALUE ...]

A second --out can reuse the first one's data and base (link `base` and the `data-*` folders into
it) to compare a switch, e.g. `--set loss.normalize_over=target`.

Runs are kept under --out (each is a normal training output folder with its MLflow run in
--out/mlflow.db); rerunning resumes or reuses finished runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mosaic.config import load_config
from mosaic.data.synthetic import generate_dataset
from mosaic.infra.runfolder import METRICS_FILE
from mosaic.train import train

VARIANTS = {"none": (0.0, 0.0), "scal": (0.4, 0.0), "mdl": (0.0, 0.6), "both": (0.4, 0.6)}


def difference(a: list[dict[str, float]], b: list[dict[str, float]], key: str) -> tuple[float, float]:
    """mean(a) - mean(b) over seeds and its standard error (0 with a single seed)."""
    x, y = [r[key] for r in a], [r[key] for r in b]
    var = sum(statistics.variance(v) / len(v) for v in (x, y) if len(v) > 1)
    return statistics.mean(x) - statistics.mean(y), var ** 0.5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=40)
    p.add_argument("--base", type=Path, help="a trained base transformer (e.g. artefacts/tiny/base, the shipped "
                   "one) instead of pre-training one here for --base-steps")
    p.add_argument("--base-steps", type=int, default=600)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides of every LoRA training, e.g. loss.normalize_over=target")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="a subset (two processes can share --out once its base exists)")
    args = p.parse_args()
    out = args.out
    data = {}
    for split, n in (("train", args.n_train), ("val", args.n_val)):
        data[split] = out / f"data-{split}-k{args.k}"
        if not data[split].exists():
            generate_dataset(data[split], n, 0, split, args.k, args.k)
    common = [f"data.train={data['train']}", "model.flavour=tiny", f"train.lr={args.lr}",
              f"tracking.tracking_uri=sqlite:///{(out / 'mlflow.db').resolve()}", "tracking.experiment=mechanism-check"]
    weights = args.base.resolve() if args.base else out / "base" / "transformer"
    base_dir = out / "base"
    if args.base is None and not (base_dir / "transformer").exists():
        train(load_config(None, [*common, "variant=base", "train.mode=base", f"train.steps={args.base_steps}",
                                 f"train.output_dir={base_dir}", "train.checkpoint_every=0", "train.drop_text=0.1"]))
    results: dict[str, list[dict[str, float]]] = {v: [] for v in args.variants}
    for seed in range(args.seeds):
        for variant in args.variants:
            alpha, beta = VARIANTS[variant]
            run = out / f"{variant}-seed{seed}"
            if not (run / METRICS_FILE).exists():
                train(load_config(None, [*common, f"variant={variant}", f"data.val={data['val']}",
                                         f"model.weights={weights}", f"train.seed={seed}",
                                         f"train.steps={args.steps}", f"train.output_dir={run}",
                                         "train.checkpoint_every=0", f"loss.alpha={alpha}", f"loss.beta={beta}",
                                         *args.set]))
            results[variant].append(json.loads((run / METRICS_FILE).read_text()))

    def cell(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} +- {sd:.3f}"

    base = str(args.base) if args.base else f"{args.base_steps} steps"
    print(f"\ntiny world, K={args.k}, {args.seeds} seeds, base {base}, LoRA {args.steps} steps, "
          f"val samples {args.n_val}" + (f", overrides {' '.join(args.set)}" if args.set else ""))
    columns = [("alignment acc", "alignment_acc"), ("leakage", "leakage"), ("leak. chance", "leakage_chance"),
               ("own share", "own_share"), ("own chance", "own_share_chance"),
               ("subject leakage", "subject_leakage"), ("subj. chance", "subject_leakage_chance")]
    print(f"{'variant':<8} " + " ".join(f"{c:>16}" for c, _ in columns))
    for variant, rows in results.items():
        print(f"{variant:<8} " + " ".join(f"{cell([r.get(f'mech/{k}', float('nan')) for r in rows]):>16}"
                                          for _, k in columns))
    print("\nthe paper's expectations (difference of means; +- the standard error of the difference):")
    for claim, key, hi, lo in (("SCAL raises alignment accuracy", "alignment_acc", "scal", "none"),
                               ("SCAL raises alignment accuracy (with MDL)", "alignment_acc", "both", "mdl"),
                               ("MDL lowers leakage (with SCAL)", "leakage", "scal", "both"),
                               ("MDL lowers subject leakage (with SCAL)", "subject_leakage", "scal", "both"),
                               ("MDL lowers subject leakage (alone)", "subject_leakage", "none", "mdl")):
        if hi in results and lo in results:
            d, se = difference(results[hi], results[lo], f"mech/{key}")
            verdict = "yes" if d > 2 * se else "no" if d < -2 * se else "not resolved"
            print(f"  {claim:<42} {hi} - {lo} = {d:+.3f} +- {se:.3f}: {verdict}")


if __name__ == "__main__":
    main()
