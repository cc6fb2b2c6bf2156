"""Workflow adapter: one study's tables and figures from its MLflow experiment (workflow.lib.tables).

    python workflow/scripts/tables.py STUDY --store results/mlflow --config JSON --out-<name> PATH ...

ablation: --out-ablation CSV --out-attention DIR (per variant: the sampled attention sheet and the
teacher-forced attention figure of its first seed, downloaded from the run's MLflow artifacts);
sweep: --out-sweep CSV --out-heatmap PNG; scaling: --out-scaling CSV --out-figure PNG;
benchmark: --out-main CSV --out-xversebench CSV. Each table CSV has three siblings, --out-<name>_tidy CSV (the
tidy long table it is computed from), --out-<name>_md and --out-<name>_tex (workflow.lib.tables.write_tables).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TABLES = ("ablation", "sweep", "scaling", "main", "xversebench")  # the --out-<name> of a table CSV


def main(argv: list[str] | None = None) -> int:
    from mosaic.infra.tracking.store import check_generation, store_uri
    from workflow.lib import figures, tables

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", choices=["ablation", "sweep", "scaling", "benchmark"])
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--generation", required=True, help="the store generation the workflow planned for")
    p.add_argument("--config", default="{}", help="JSON: methods {name: {label, paper}}, paper_values, profile")
    for name in ("attention", "heatmap", "figure"):
        p.add_argument(f"--out-{name}", type=Path)
    for name in TABLES:
        for form in ("", "_tidy", "_md", "_tex"):
            p.add_argument(f"--out-{name}{form}", type=Path)
    args = p.parse_args(argv)
    cfg = json.loads(args.config)
    methods = cfg.get("methods", {})
    paper = tables.read_paper(cfg.get("paper_values"))
    check_generation(args.store, args.generation)
    uri = store_uri(args.store)
    runs = tables.load_runs(uri, args.study)
    long = tables.tidy(runs)  # every table below is computed from it

    def write(name, table, rows=long):
        out = {form: getattr(args, f"out_{name}{form}") for form in ("", "_tidy", "_md", "_tex")}
        return tables.write_tables(table, rows, out[""], out["_tidy"], out["_md"], out["_tex"], title=name)

    profile = cfg.get("profile", "tiny")  # no paper gap unless the config says it is the paper profile
    world = "" if profile == "paper" else " (tiny world: comparable within the synthetic world only)"
    if args.study == "ablation":
        t = tables.ablation_table(long, methods, paper, profile)
        write("ablation", t)
        figures.attention_figures(runs, uri, list(methods), args.out_attention)
    elif args.study == "sweep":
        t = tables.sweep_table(long)
        write("sweep", t)
        figures.sweep_heatmap(t, [m for m in tables.display_metrics(t) if m not in tables.CHANCES.values()],
                              args.out_heatmap,
                              f"alpha (SCAL) x beta (MDL) sweep, mean over seeds and n{world}")
    elif args.study == "scaling":
        t = tables.scaling_table(long, list(methods))
        write("scaling", t)
        shown = [m for m in tables.display_metrics(t) if m not in tables.CHANCES.values()]
        figures.scaling_plot(t, shown, args.out_figure,
                             f"metric vs subjects per test sample; error bars: std over seeds{world}",
                             reference={m: c for m, c in tables.CHANCES.items() if c in tables.display_metrics(t)}
                             or None)
    else:
        t = tables.benchmark_table(long, "dreambench", methods, paper, "main", profile)
        write("main", t, tables.benchmark_long(long, "dreambench"))
        x = tables.benchmark_table(long, "xversebench", methods, paper, "xverse", profile)
        print(write("xversebench", x, tables.benchmark_long(long, "xversebench")).to_string())
    print(tables.readable(t).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
