"""Workflow adapter: evaluate one sample folder into a record the mlflow_log job logs.

    python workflow/scripts/evaluate.py SAMPLES --metrics-config FILE --metric-names CLIP-I,DINO \
        --evalset heldout-k2 --benchmark heldout --scenario multi [--n 2] [--benchmarks-root DIR] --out DIR

Writes into DIR (renamed into place when complete): eval/ (metrics.evaluate tables), sheet.png
(samples with attention overlays), the sampling job's mechanism.json / mechanism.png if it measured
the held-out alignment accuracy and leakage (workflow/scripts/sample.py), and record.json:
{"metrics", "params", "tags", "artifacts"}. Image metrics are the means over (image, reference)
pairs ("img/<metric>") and over images of the minimum over references ("img/<metric>.min");
mechanism shares are in % ("mech/..."); the images and prompts sampled are "count/images" and
"count/prompts"; the reasons of NaN values and protocol zeros are tags, and so are each metric's
protocol name (`protocol/<metric>`, e.g. "dreambench++") and procedure in words. "start_time" and
"end_time" (ms since the epoch) are this evaluation's own, the MLflow run's duration (the sampling job's
time is in its Snakemake benchmark file: it is another job, run at another time).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch


def image_metrics(samples: Path, cfg: dict, names: list[str], out: Path,
                  extra: list[Path] = ()) -> tuple[dict, dict]:
    """Run the metrics suite; (metrics, tags) from its aggregate table. `extra`: evaluation-table rows scored
    in another environment (e.g. HPSv3, metrics.hps_job), merged into metrics.csv before aggregating."""
    import pandas as pd

    from metrics.evaluate import AGGREGATE, TABLE, aggregate, evaluate_folder

    folder = evaluate_folder(samples, cfg, [n for n in names if n], out=out, missing="nan")
    if extra:  # `out` lies inside the job's atomic output folder: rewriting its files here is still atomic
        table = pd.concat([pd.read_csv(folder / TABLE)] + [pd.read_csv(p) for p in extra], ignore_index=True)
        table.to_csv(folder / TABLE, index=False)
        aggregate(table).to_csv(folder / AGGREGATE, index=False)
    agg = pd.read_csv(folder / AGGREGATE)
    rows = pd.read_csv(folder / TABLE, usecols=["metric", "reason"]).dropna()
    metrics, tags = {}, {}
    for metric, g in rows.groupby("metric"):  # why values are NaN or protocol zeros (e.g. no face detected)
        tags[f"reasons/{metric}"] = "; ".join(f"{r}: {n}" for r, n in g["reason"].value_counts().items())[:4000]
    for r in agg.itertuples():
        key = f"img/{r.metric}" + (".min" if "min over references" in r.statistic else "")
        metrics[key] = float(r.value)
        if not key.endswith(".min"):
            metrics[f"count/{r.metric}"] = float(r.n)
            metrics[f"nan/{r.metric}"] = float(r.n_nan)
            tags[f"label/{r.metric}"] = r.label
            tags[f"model/{r.metric}"] = " ".join(str(x) for x in (r.model, r.weights) if isinstance(x, str))
            # the published protocol's name: a table compares with the paper only under the paper's protocol
            tags[f"protocol/{r.metric}"] = r.protocol if isinstance(r.protocol, str) else ""
            tags[f"procedure/{r.metric}"] = (r.procedure if isinstance(r.procedure, str) else "")[:4000]
    return metrics, tags


def mechanism(samples: Path) -> dict:
    """The sampling job's held-out mechanism metrics, shares in % ("mech/..."); {} if it measured none."""
    path = samples / "mechanism.json"
    if not path.is_file():
        return {}
    results = json.loads(path.read_text())
    return {k: (v if k in ("mech/points", "mech/samples") else 100 * v) for k, v in results.items()}


def benchmark_counts(benchmark: str, scenario: str, root: str) -> dict:
    from mosaic.data.benchmarks import load_benchmark

    bs = load_benchmark(benchmark, scenario, root)
    return {"entries/total": float(bs.total), "entries/runnable": float(len(bs.entries)),
            "entries/skipped": float(len(bs.skipped))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("samples", type=Path)
    p.add_argument("--metrics-config", required=True, type=Path)
    p.add_argument("--metric-names", required=True, help="comma-separated metrics.registry names")
    p.add_argument("--evalset", required=True)
    p.add_argument("--benchmark", required=True)
    p.add_argument("--scenario", required=True)
    p.add_argument("--n", type=int, help="subjects per test sample (held-out sets)")
    p.add_argument("--benchmarks-root", help="benchmark folder (skipped-entry counts)")
    p.add_argument("--extra-table", action="append", type=Path, default=[],
                   help="evaluation-table rows scored in another environment (metrics.hps_job for HPSv3); repeatable")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    started = time.time_ns() // 1_000_000
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    from mosaic.infra.runfolder import MANIFEST_FILE, atomic_dir
    from mosaic.infra.tracking.run import provenance
    from workflow.lib.figures import sample_sheet

    cfg = json.loads(args.metrics_config.read_text())
    lines = [json.loads(x) for x in (args.samples / MANIFEST_FILE).read_text().splitlines() if x.strip()]
    with atomic_dir(args.out, overwrite=True) as tmp:
        metrics, tags = image_metrics(args.samples, cfg, args.metric_names.split(","), tmp / "eval",
                                      args.extra_table)
        metrics["count/images"] = float(len(lines))
        metrics["count/prompts"] = float(len({rec.get("entry", rec["id"]) for rec in lines}))
        artifacts = ["eval/aggregate.csv", "eval/metrics.csv", "sheet.png"]
        mech = mechanism(args.samples)
        if mech:
            metrics.update(mech)
            for name in ("mechanism.json", "mechanism.png"):
                if (args.samples / name).is_file():
                    shutil.copy(args.samples / name, tmp / name)
                    artifacts.append(name)
        if args.benchmarks_root and args.benchmark in ("dreambench", "xversebench"):
            metrics.update(benchmark_counts(args.benchmark, args.scenario, args.benchmarks_root))
        method = lines[0].get("method", "")
        sample_sheet(args.samples, tmp / "sheet.png", n=4, title=f"{method} on {args.evalset}")
        settings = lines[0].get("meta", {}).get("settings", {})
        seeds = sorted({rec.get("seed") for rec in lines})
        record = {
            "metrics": metrics,
            "params": {**{f"sample.{k}": v for k, v in settings.items()},
                       "sample.seeds": json.dumps(seeds),
                       "metrics.config": json.dumps({k: cfg[k] for k in sorted(cfg)})[:6000]},
            "tags": {**tags, "evalset": args.evalset, "benchmark": args.benchmark, "scenario": args.scenario,
                     "n": str(args.n) if args.n is not None else "", "samples_dir": str(args.samples.resolve()),
                     "sample_seeds": ",".join(map(str, seeds)), **provenance()},
            "artifacts": artifacts,
            "start_time": started, "end_time": time.time_ns() // 1_000_000,
        }
        (tmp / "record.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
