"""Workflow adapter: one study's tables and figures from its MLflow experiment (mosaic.tables).

    python workflow/scripts/tables.py STUDY --store results/mlflow --config JSON --out-<name> PATH ...

ablation: --out-ablation CSV --out-attention DIR (per variant: the sampled attention sheet and the
teacher-forced attention figure of its first seed, downloaded from the run's MLflow artifacts);
sweep: --out-sweep CSV --out-heatmap PNG; scaling: --out-scaling CSV --out-figure PNG;
benchmark: --out-main CSV --out-xversebench CSV.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


def attention_figures(runs, uri: str, methods: list[str], out: Path) -> None:
    """Per method: the sheet.png / mechanism.png artifacts of its lowest-seed run on its largest held-out n."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for method in methods:
        g = runs[runs["tags.method"] == method].copy()
        if g.empty:
            continue
        g["_seed"] = g["tags.seed"].astype(int)
        g["_n"] = g["tags.n"].replace("", "0").astype(int)
        best = g.sort_values(["_seed", "_n"], ascending=[True, False]).iloc[0]
        names = {a.path for a in client.list_artifacts(best["run_id"])}
        with tempfile.TemporaryDirectory() as d:
            for art, suffix in (("sheet.png", "sampled"), ("mechanism.png", "teacher_forced")):
                if art in names:
                    local = client.download_artifacts(best["run_id"], art, d)
                    shutil.copy(local, tmp / f"{method}_{suffix}.png")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    from mosaic import figures, tables
    from mosaic.mlflow_store import check_generation, store_uri

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", choices=["ablation", "sweep", "scaling", "benchmark"])
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--generation", required=True, help="the store generation the workflow planned for")
    p.add_argument("--config", default="{}", help="JSON: methods {name: {label, paper}}, paper_values, profile")
    for name in ("ablation", "attention", "sweep", "heatmap", "scaling", "figure", "main", "xversebench"):
        p.add_argument(f"--out-{name}", type=Path)
    args = p.parse_args(argv)
    cfg = json.loads(args.config)
    methods = cfg.get("methods", {})
    paper = tables.read_paper(cfg.get("paper_values"))
    check_generation(args.store, args.generation)
    uri = store_uri(args.store)
    runs = tables.load_runs(uri, args.study)
    world = "" if cfg.get("profile") == "paper" else " (tiny world: comparable within the synthetic world only)"
    if args.study == "ablation":
        t = tables.ablation_table(runs, methods, paper)
        tables.write_csv(t, args.out_ablation)
        attention_figures(runs, uri, list(methods), args.out_attention)
    elif args.study == "sweep":
        t = tables.sweep_table(runs)
        tables.write_csv(t, args.out_sweep)
        figures.sweep_heatmap(t, [m for m in tables.display_metrics(t) if m not in tables.CHANCES.values()],
                              args.out_heatmap,
                              f"alpha (SCAL) x beta (MDL) sweep, mean over seeds and n{world}")
    elif args.study == "scaling":
        t = tables.scaling_table(runs, list(methods))
        tables.write_csv(t, args.out_scaling)
        shown = [m for m in tables.display_metrics(t) if m not in tables.CHANCES.values()]
        figures.scaling_plot(t, shown, args.out_figure,
                             f"metric vs subjects per test sample; error bars: std over seeds{world}",
                             reference={m: c for m, c in tables.CHANCES.items() if c in tables.display_metrics(t)}
                             or None)
    else:
        t = tables.benchmark_table(runs, "dreambench", methods, paper, "main")
        tables.write_csv(t, args.out_main)
        x = tables.benchmark_table(runs, "xversebench", methods, paper, "xverse")
        tables.write_csv(x, args.out_xversebench)
        print(x.to_string())
    print(t.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
