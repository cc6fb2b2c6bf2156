"""Each study's table from its tidy rows: ablation, sweep, scaling, and the benchmarks (main, xversebench).

Why it exists: the studies differ only in how they group the tidy rows, which paper table they compare with
and in which order rows and columns appear; the statistics (summarise) and the gaps (paper_gaps) are shared.
"""
from __future__ import annotations

import pandas as pd

from .. import paper_columns
from .paper_gaps import add_paper, paper_names
from .summarise import COVERAGE, add_coverage, display_metrics, summarise
from .tidy import metric_names

def _order(table: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    rank = {m: i for i, m in enumerate(methods)}
    return table.sort_values("method", key=lambda s: s.map(lambda m: rank.get(m, len(rank))), kind="stable")


def _front(table: pd.DataFrame, first: list[str], metrics: dict[str, str]) -> pd.DataFrame:
    """Column order: the keys, the "mean ± std" columns, paper/gap, then numbers, counts and run ids."""
    names = list(dict.fromkeys([*metrics.values(), *display_metrics(table)]))  # with the paper-only metrics
    shown = [c for c in [*first, COVERAGE] if c in table] + [n for n in names if n in table]
    shown += [c for n in names for c in (f"{n} paper", f"{n} gap") if c in table]
    return table[shown + [c for c in table.columns if c not in shown]]


def ablation_table(long: pd.DataFrame, methods: dict[str, dict], paper: pd.DataFrame | None = None,
                   profile: str = "paper") -> pd.DataFrame:
    """method (variant) x benchmark/scenario x n over seeds, from the study's tidy table: a held-out row is one
    subject count (n), never pooled across n."""
    metrics = metric_names(long)
    by = ["method", "benchmark", "scenario", "n"]
    t = summarise(long, by, metrics)
    t.insert(1, "label", t["method"].map(lambda m: methods.get(m, {}).get("label", "")))
    t = add_coverage(t, long, by)
    t = add_paper(t, paper, "ablation", metrics, paper_names(methods, "ablation"), profile)
    t = _order(t.sort_values("n", key=lambda s: pd.to_numeric(s, errors="coerce"), kind="stable"), list(methods))
    return _front(t, ["method", "label", "benchmark", "scenario", "n"], metrics)


def sweep_table(long: pd.DataFrame) -> pd.DataFrame:
    """alpha x beta over seeds and n, from the study's tidy table."""
    metrics = metric_names(long)
    t = summarise(long, ["alpha", "beta", "method"], metrics)
    t["alpha"], t["beta"] = t["alpha"].astype(float), t["beta"].astype(float)
    return _front(t.sort_values(["alpha", "beta"]), ["alpha", "beta", "method"], metrics)


def scaling_table(long: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """method x train K x n over seeds, from the study's tidy table."""
    metrics = metric_names(long)
    t = summarise(long, ["method", "ktrain", "n"], metrics)
    # ktrain 0: a bound of the image metrics (mosaic.inference.bounds), which trains nothing
    t["ktrain"] = pd.to_numeric(t["ktrain"], errors="coerce").fillna(0).astype(int)
    t["n"] = t["n"].astype(int)
    t = _order(t.sort_values(["ktrain", "n"]), methods)
    return _front(t, ["method", "ktrain", "n"], metrics)


def _overall_identity(table: pd.DataFrame) -> pd.DataFrame:
    """The Overall rows (scenario `all`, workflow.lib.paper_columns.overall) inherit the AVG protocol their two
    scenarios share and the prompts of both, so that their gap follows the same rule as the AVGs'."""
    rows = table["scenario"] == paper_columns.ALL
    if not rows.any():
        return table
    table = table.copy()
    for i in table.index[rows]:
        parts = table[(table["method"] == table.at[i, "method"]) & ~rows]
        if "AVG protocol" in parts:
            names = set(parts["AVG protocol"].fillna(""))
            table.loc[i, "AVG protocol"] = names.pop() if len(names) == 1 else ";".join(sorted(names))
        cov = [c.split(" / ") for c in parts.get(COVERAGE, pd.Series(dtype=object)) if isinstance(c, str)]
        if COVERAGE in table:
            table[COVERAGE] = table[COVERAGE].astype(object)
            table.loc[i, COVERAGE] = (f"{sum(int(r) for r, _ in cov)} / {sum(int(t) for _, t in cov)}"
                                      if cov and len(cov) == len(parts) else float("nan"))
    return table


def benchmark_long(long: pd.DataFrame, benchmark: str) -> pd.DataFrame:
    """The rows of one benchmark's runs (dreambench: the main table, xversebench) of the study's tidy table."""
    return long[long["benchmark"] == benchmark].reset_index(drop=True) if "benchmark" in long else long.iloc[:0]


def benchmark_table(long: pd.DataFrame, benchmark: str, methods: dict[str, dict], paper: pd.DataFrame | None,
                    paper_table: str, profile: str = "paper") -> pd.DataFrame:
    """DreamBench (main) or XVerseBench: scenario x method over seeds, with prompt/entry counts, from the study's
    tidy table (the kit's AVG per run is in it already: tidy)."""
    long = benchmark_long(long, benchmark)
    if long.empty:
        return pd.DataFrame(columns=["benchmark", "scenario", "method"])
    metrics = metric_names(long, mechanism=False)
    t = summarise(long, ["benchmark", "scenario", "method"], metrics)
    for col in ("prompts", "images", "entries_total", "entries_runnable", "entries_skipped"):
        if col in long:
            per = long.groupby(["scenario", "method"], sort=False)[col].max()
            t[col.replace("entries_", "")] = [per.get((s, m)) for s, m in zip(t["scenario"], t["method"])]
    t = add_coverage(t, long, ["benchmark", "scenario", "method"])
    t, metrics = paper_columns.complete(t, metrics, paper_columns.paper_metrics(paper, paper_table))
    if paper_table == "xverse":
        t = _overall_identity(paper_columns.overall(t))
    t = add_paper(t, paper, paper_table, metrics, paper_names(methods, paper_table), profile)
    t = _order(t, list(methods)).sort_values("scenario", kind="stable")
    return _front(t, ["benchmark", "scenario", "method"], metrics)
