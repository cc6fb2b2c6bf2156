"""Every column of the paper's Tables 1 and 2 in the benchmark tables, and XVerseBench's AVG and Overall.

Why it exists: a metric that was not measured (not in the evaluation set's metrics, or NaN in every
cell) must still show as a column, NaN with its reason, rather than vanish; and XVerseBench's AVG
and Overall are derived numbers, computed here the way the kit and the paper aggregate them:
- AVG (per scenario): the unweighted mean of DPG, ID-Sim, IP-Sim and AES
  (shared/benchmarks/README.md: "XVerseBench total: unweighted mean of DPG, ID-Sim, IP-Sim and
  AES"; shared/paper/README.md; it reproduces every AVG of the paper's Table 2, e.g. MOSAIC single
  (96.55 + 81.98 + 80.92 + 60.77) / 4 = 80.055 -> 80.05). It is computed per evaluation run (one
  training seed), so the table's AVG carries a mean and std over seeds like any metric; NaN when a
  part is NaN or missing, with the parts named in `tags.reasons/AVG` (the table's notes).
- Overall: the mean of the single and multi AVG of a method (paper: (80.05 + 72.03) / 2 = 76.04),
  a row with scenario `all` (as mosaic_reported.csv stores it) whose AVG is the Overall. The paper
  averages its AVGs as printed (2 decimals): from unrounded AVGs three of its six Overall cells come
  out 0.01 lower (MS-Diffusion 51.48, not 51.49); here the AVGs are not rounded.
"""
from __future__ import annotations

import math

import pandas as pd

AVG_PARTS = ("DPG", "ID-Sim", "IP-Sim", "AES")
AVG, OVERALL, ALL = "AVG", "Overall", "all"
# the columns of the paper's tables (tables.py's paper_table names); the paper file may add more
COLUMNS = {"main": ["CLIP-I", "CLIP-T", "DINO", "UnifiedReward", "HPSv3"], "xverse": [*AVG_PARTS, AVG]}
NOT_MEASURED = "not measured in this study (not among the evaluation set's metrics, or NaN in every cell)"


def paper_metrics(paper: pd.DataFrame | None, paper_table: str) -> list[str]:
    """The metric columns of the paper's `paper_table`: COLUMNS, then any other metric the paper file reports."""
    names = list(COLUMNS.get(paper_table, []))
    if paper is not None:
        names += [m for m in dict.fromkeys(paper.loc[paper["table"] == paper_table, "metric"]) if m not in names]
    return names


def with_avg(runs: pd.DataFrame) -> pd.DataFrame:
    """`metrics.img/AVG` per run (the mean of the four parts, NaN unless all four are numbers), and the reason
    (`tags.reasons/AVG`) where it is NaN."""
    runs = runs.copy()
    parts = pd.DataFrame({p: pd.to_numeric(runs[f"metrics.img/{p}"], errors="coerce") if f"metrics.img/{p}" in runs
                          else math.nan for p in AVG_PARTS}, index=runs.index)
    runs[f"metrics.img/{AVG}"] = parts.mean(axis=1).where(parts.notna().all(axis=1))
    missing = parts.isna().apply(lambda r: [p for p in AVG_PARTS if r[p]], axis=1)
    runs[f"tags.reasons/{AVG}"] = [f"needs {', '.join(AVG_PARTS)}; not available: {', '.join(m)}" if m else None
                                   for m in missing]
    # its protocol: the one its four parts share (tables.py compares it with the paper's only then)
    protos = pd.DataFrame({p: runs.get(f"tags.protocol/{p}", pd.Series("", index=runs.index)).fillna("")
                           for p in AVG_PARTS}, index=runs.index)
    runs[f"tags.protocol/{AVG}"] = [r.iloc[0] if r.nunique() == 1 else "mixed: " + ", ".join(f"{p} {v or '?'}"
                                    for p, v in r.items()) for _, r in protos.iterrows()]
    return runs


def complete(table: pd.DataFrame, metrics: dict[str, str], names: list[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Add each paper metric the table lacks as a NaN column ("n/a", mean/std NaN, 0 cells) with the reason in
    `notes`; returns the table and the metrics mapping extended with those columns (for add_paper)."""
    shown = {n.split(" (")[0] for n in metrics.values()}
    absent = [n for n in names if n not in shown]
    if not absent or table.empty:
        return table, metrics
    table = table.copy()
    for n in absent:
        table[n], table[f"{n} mean"], table[f"{n} std"], table[f"{n} cells"] = "n/a", math.nan, math.nan, 0
    note = " | ".join(f"{n}: {NOT_MEASURED}" for n in absent if n != AVG)
    if note:
        table["notes"] = [" | ".join(x for x in (str(v) if isinstance(v, str) else "", note) if x)
                          for v in table.get("notes", pd.Series([""] * len(table), index=table.index))]
    return table, {**metrics, **{f"absent/{n}": n for n in absent}}


def overall(table: pd.DataFrame) -> pd.DataFrame:
    """Append, per method, the row scenario `all`: AVG (and the Overall column) = the mean of its single and
    multi AVG means; NaN with the reason when either is missing."""
    if table.empty or f"{AVG} mean" not in table:
        return table
    rows = []
    for method, g in table.groupby("method", sort=False):
        by = dict(zip(g["scenario"], g[f"{AVG} mean"]))
        have = [by.get(s) for s in ("single", "multi")]
        ok = all(v is not None and not pd.isna(v) for v in have)
        value = (have[0] + have[1]) / 2 if ok else math.nan
        shown = f"{value:.2f}" if ok else "n/a"
        state = ", ".join(f"{s}: {'n/a' if v is None or pd.isna(v) else 'ok'}" for s, v in zip(("single", "multi"), have))
        note = "Overall: mean of the single and multi AVG" if ok else f"Overall: needs the AVG of both scenarios ({state})"
        rows.append({"benchmark": g["benchmark"].iloc[0], "scenario": ALL, "method": method, AVG: shown,
                     f"{AVG} mean": value, f"{AVG} std": math.nan, f"{AVG} cells": int(ok),
                     OVERALL: shown, f"{OVERALL} mean": value, "notes": note})
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
