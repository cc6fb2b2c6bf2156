"""A study table's files: the readable wide CSV, the tidy CSV, Markdown and LaTeX, each written atomically.

Why it exists: what a reader opens drops the internal numbers (means, stds, cells, run ids) that the figures
and gaps read, and the three text forms must print the same cells.
"""
from __future__ import annotations

import itertools
import numbers
import os
from pathlib import Path
from typing import Any

import pandas as pd

from mosaic.infra.runfolder import atomic_file, atomic_write

from .summarise import COVERAGE, NUMERIC, display_metrics

def write_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write `table` to `path` atomically (mosaic.infra.runfolder.atomic_file); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """The paper-style wide table a reader opens (the study's CSV): its keys and labels, coverage, "mean ± std"
    per metric (chance columns included), paper value and gap, counts, runs/seeds/ns and notes; the numbers behind
    it (means, stds, cells, protocols, run ids) are the tidy table's."""
    numeric = [f"{n}{s}" for n in display_metrics(table) for s in NUMERIC] + ["eval_run_ids", "train_run_ids"]
    return table.drop(columns=[c for c in numeric if c in table])


def _cell(value: Any, column: str) -> str:
    if not isinstance(value, str) and pd.isna(value):
        return ""
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return f"{value:.2f}" if column.endswith((" paper", " gap")) else f"{value:g}"
    return str(value)


def shown(wide: pd.DataFrame) -> pd.DataFrame:
    """The readable table as the text Markdown and LaTeX print (paper and gap to 2 decimals, NaN blank), notes
    aside."""
    out = wide.drop(columns=[c for c in ("notes",) if c in wide])
    return pd.DataFrame({c: [_cell(v, c) for v in out[c]] for c in out.columns}, index=out.index, dtype=object)


def row_keys(table: pd.DataFrame) -> list[str]:
    """The columns that name a row (method, label, benchmark, ...): those before the coverage or first metric."""
    stop = {COVERAGE, *display_metrics(table)}
    return list(itertools.takewhile(lambda c: c not in stop, table.columns))


def markdown(wide: pd.DataFrame, title: str, keys: list[str]) -> str:
    """The readable table in Markdown (pandas to_markdown, GitHub pipes), its rows' notes listed under it, each
    named by its `keys`."""
    text = f"# {title}\n\n" + shown(wide).to_markdown(index=False, disable_numparse=True) + "\n"
    notes = [(r, n) for r, n in zip(shown(wide[keys]).itertuples(index=False),
                                    wide.get("notes", pd.Series(dtype=object))) if isinstance(n, str) and n]
    if notes:
        text += "\nNotes:\n\n" + "".join(f"- {' / '.join(v for v in r if v)}: {n}\n" for r, n in notes)
    return text


def latex(wide: pd.DataFrame, title: str) -> str:
    """The readable table as a LaTeX tabular (pandas to_latex, escaped; needs booktabs), notes aside."""
    text = shown(wide)
    body = text.to_latex(index=False, escape=True, column_format="l" * len(text.columns))
    return f"% {title}: from the study's MLflow runs (workflow/lib/tables/); needs \\usepackage{{booktabs}}\n{body}"


def write_tables(table: pd.DataFrame, long: pd.DataFrame, csv: str | os.PathLike,
                 tidy_csv: str | os.PathLike | None = None, md: str | os.PathLike | None = None,
                 tex: str | os.PathLike | None = None, title: str = "") -> pd.DataFrame:
    """Write one table's forms atomically: the readable wide CSV (`readable`), the tidy long CSV it was computed
    from, Markdown and LaTeX; returns the readable table."""
    wide, keys = readable(table), row_keys(table)
    write_csv(wide, csv)
    if tidy_csv:
        write_csv(long, tidy_csv)
    title = title or Path(csv).stem
    if md:
        _write_text(md, markdown(wide, title, keys))
    if tex:
        _write_text(tex, latex(wide, title))
    return wide


def _write_text(path: str | os.PathLike, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
