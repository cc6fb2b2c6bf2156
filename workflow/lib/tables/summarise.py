"""The wide table's numbers: per group of tidy rows and per metric, mean, std, cells, standard error, "mean ± SE".

Why it exists: the one place the tables aggregate over seeds (and n where a study pools it), so every study
table reports the same statistics the same way.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

COVERAGE = "n run / n in protocol"  # prompts run / prompts of the benchmark's protocol (all entries, runnable or not)


NUMERIC = (" mean", " std", " se", " cells", " protocol")  # the internal table's per-metric numeric columns


def _fmt(mean: float, se: float) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.2f}" if pd.isna(se) else f"{mean:.2f} ± {se:.2f}"


def _ids(values: pd.Series) -> str:
    return ";".join(dict.fromkeys(str(v) for v in values if isinstance(v, str) and v))


def _notes(g: pd.DataFrame) -> str:
    """The metrics' reasons (NaN values and protocol zeros such as "no face detected"), with their counts."""
    why = g[g["reason"].notna()]
    return " | ".join(dict.fromkeys(f"{k.split('/', 1)[1]}: {r}" for k, r in zip(why["key"], why["reason"])))


def _values(tags: pd.Series) -> str:
    return ",".join(sorted({str(v) for v in tags.dropna() if str(v)}, key=lambda s: (len(s), s)))


def summarise(long: pd.DataFrame, by: list[str], metrics: dict[str, str]) -> pd.DataFrame:
    """One row per group of `by` (tidy columns, e.g. "method") of the tidy table: per metric (the display names
    in `metrics`) the mean, std (ddof=1; NaN for one cell), `cells` (values), se (std / sqrt(cells)) and
    "mean ± SE" over the group's rows of that metric, and for image metrics the protocols they were computed
    under; `runs`, the seeds (and their count) and n values covered, the metrics' reasons (notes), and the
    eval/train run ids."""
    names = list(dict.fromkeys(metrics.values()))
    image = set(long.loc[long["key"].str.startswith("img/"), "metric"])
    rows = []
    for key, g in long.groupby(by, sort=False, dropna=False):
        row: dict[str, Any] = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for name in names:
            cell = g[g["metric"] == name]
            v = cell["value"]
            count = int(v.notna().sum())
            se = v.std() / count ** 0.5 if count else float("nan")
            row[name] = _fmt(v.mean(), se)
            row[f"{name} mean"], row[f"{name} std"], row[f"{name} se"] = v.mean(), v.std(), se
            row[f"{name} cells"] = count
            if name in image:  # the protocol names the runs recorded (metrics.evaluate)
                row[f"{name} protocol"] = ";".join(sorted({str(x) for x in cell["protocol"].dropna() if str(x)}))
        row["runs"] = g["eval_run_id"].nunique()
        for tag in ("seed", "n"):
            if tag in g:
                row[f"{tag}s"] = _values(g[tag])
        if "seed" in g:
            row["n seeds"] = int(g["seed"].replace("", pd.NA).dropna().nunique())
        row["notes"] = _notes(g)
        row["eval_run_ids"] = _ids(g["eval_run_id"])
        row["train_run_ids"] = _ids(g["train_run_id"])
        rows.append(row)
    return pd.DataFrame(rows)


def add_coverage(table: pd.DataFrame, long: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """`n run / n in protocol` per row: the prompts its runs generated / the benchmark protocol's entries (runnable
    or not), where the runs logged both (benchmark evaluations; tidy columns prompts, entries_total); other rows
    get NaN."""
    if "entries_total" not in long or "prompts" not in long:
        return table
    table = table.copy()
    per = long.groupby(by, sort=False, dropna=False)[["prompts", "entries_total"]].max()
    cells = []
    for key in zip(*(table[b] for b in by)):
        run, total = per.loc[key] if key in per.index else (float("nan"), float("nan"))
        cells.append(f"{int(run)} / {int(total)}" if pd.notna(run) and pd.notna(total) else float("nan"))
    table[COVERAGE] = cells
    return table


def display_metrics(table: pd.DataFrame) -> list[str]:
    """The display names of the metrics a table carries (columns with a "<name> mean" twin)."""
    return [c[: -len(" mean")] for c in table.columns if c.endswith(" mean")]
