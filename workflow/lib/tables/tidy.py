"""The tidy long table: one row per evaluation run x metric, from a study's MLflow runs (mlflow.search_runs).

Why it exists: every table is computed from this one table, and every row of it names the evaluation and
training runs it came from, so each number in a table can be traced to its runs.
"""
from __future__ import annotations

import os

import pandas as pd

from .. import paper_columns

CHANCE = "leakage at chance (%)"  # the leakage of a uniform attention: the share of other subjects' tokens


SUBJECT_CHANCE = "subject leakage at chance (%)"  # the same for subject leakage: about (n-1)/n


CHANCES = {"leakage (%)": CHANCE, "subject leakage (%)": SUBJECT_CHANCE}  # metric -> its chance column


MECHANISM = {"metrics.mech/alignment_acc": "alignment acc (%)", "metrics.mech/leakage": "leakage (%)",
             "metrics.mech/leakage_chance": CHANCE, "metrics.mech/subject_leakage": "subject leakage (%)",
             "metrics.mech/subject_leakage_chance": SUBJECT_CHANCE}


ORDER = ["CLIP-I", "CLIP-T", "DINO", "UnifiedReward", "HPSv2.1", "HPSv3", "DPG", "ID-Sim", "IP-Sim", "AES",
         "AVG", "Own-Ref", "Other-Ref", "Shape-Acc"]  # the papers' column order, then the places world's per-subject scores


def load_runs(tracking_uri: str, experiment: str, kind: str = "eval") -> pd.DataFrame:
    """The study's active runs of one kind (eval / train), as mlflow.search_runs returns them."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    from mosaic.infra.tracking import retry

    retry.client(tracking_uri)  # opens the store with the retry settings (busy timeout, locked-open retries)
    mlflow.set_tracking_uri(tracking_uri)
    runs = retry.call(tracking_uri, f"search {kind} runs of {experiment!r}", mlflow.search_runs,
                      experiment_names=[experiment], filter_string=f"tags.kind = '{kind}'", max_results=50000)
    if runs.empty:
        raise ValueError(f"{tracking_uri}: experiment {experiment!r} has no {kind} runs")
    return runs


GRID = ("study", "method", "label", "benchmark", "scenario", "evalset", "ktrain", "n", "seed", "alpha", "beta")


COUNTS = {"metrics.count/prompts": "prompts", "metrics.count/images": "images", "metrics.entries/total": "entries_total",
          "metrics.entries/runnable": "entries_runnable", "metrics.entries/skipped": "entries_skipped"}


TIDY_VALUES = ["metric", "key", "value", "protocol", "reason"]  # the tidy table's per-metric columns


RUN_IDS = ["eval_run_id", "train_run_id"]


def _image_name(key: str) -> str:
    return key[len("img/"):]


def _rank(key: str) -> tuple:
    """A metric's place in a table: the image metrics in the papers' order (ORDER, then by name), then MECHANISM's."""
    if key.startswith("img/"):
        name = _image_name(key)
        return 0, ORDER.index(name) if name in ORDER else len(ORDER), name
    return 1, list(MECHANISM).index(f"metrics.{key}"), ""


def _keys(runs: pd.DataFrame) -> list[str]:
    """The table metrics a frame of runs carries (image metrics `metrics.img/<M>`, not the `.min` twins, or a
    reason `tags.reasons/<M>`; MECHANISM), in table order (_rank)."""
    names = {c.split("/", 1)[1] for c in runs.columns
             if (c.startswith("metrics.img/") and not c.endswith(".min")) or c.startswith("tags.reasons/")}
    return sorted([f"img/{n}" for n in names] + [c[len("metrics."):] for c in MECHANISM if c in runs], key=_rank)


def tidy(runs: pd.DataFrame) -> pd.DataFrame:
    """The long table every aggregate table is computed from: one row per evaluation run x metric, with the
    run's grid tags (GRID, those the runs have), the metric's display name (`metric`: its `label/<M>` tag where
    the runs agree on one, MECHANISM's names), its MLflow key, value, protocol tag and reason tag (why NaN or a
    protocol zero), the run's prompt and entry counts (COUNTS), and the eval and training run ids.
    A run's metrics are those any run of its benchmark logged a value or a reason for (NaN where it has none);
    XVerseBench runs also get the kit's per-run AVG (workflow.lib.paper_columns.with_avg)."""
    runs = runs.reset_index(drop=True)
    bench = runs["tags.benchmark"] if "tags.benchmark" in runs else pd.Series("", index=runs.index)
    if (bench == "xversebench").any():
        avg = paper_columns.with_avg(runs[bench == "xversebench"])
        runs = runs.copy()
        for c in (f"metrics.img/{paper_columns.AVG}", f"tags.reasons/{paper_columns.AVG}",
                  f"tags.protocol/{paper_columns.AVG}"):
            runs[c] = avg[c].reindex(runs.index)
    labels = {}  # image metric -> its one display label across the runs, if they agree on one
    for key in _keys(runs):
        if key.startswith("img/"):
            found = runs.get(f"tags.label/{_image_name(key)}", pd.Series(dtype=object)).dropna().unique()
            labels[key] = found[0] if len(found) == 1 else None
    grid = [g for g in GRID if f"tags.{g}" in runs]
    frames = []
    for _, g in runs.groupby(bench.fillna(""), sort=False):
        for key in _keys(g.dropna(axis=1, how="all")):
            col, name = f"metrics.{key}", _image_name(key) if key.startswith("img/") else key
            label = labels.get(key)
            if key.startswith("img/") and label is None:  # several labels: each run keeps its own
                label = g.get(f"tags.label/{name}", pd.Series(index=g.index, dtype=object)).fillna(name)
            frames.append(pd.DataFrame({
                **{c: g[f"tags.{c}"] for c in grid},
                "metric": label if key.startswith("img/") else MECHANISM[col],
                "key": key,
                "value": pd.to_numeric(g[col], errors="coerce") if col in g else float("nan"),
                "protocol": g.get(f"tags.protocol/{name}", pd.Series(index=g.index, dtype=object)),
                "reason": g.get(f"tags.reasons/{name}", pd.Series(index=g.index, dtype=object)),
                **{short: pd.to_numeric(g[c], errors="coerce") for c, short in COUNTS.items() if c in g},
                "eval_run_id": g["run_id"],
                "train_run_id": g["tags.train_run_id"] if "tags.train_run_id" in g else "",
            }, index=g.index))
    if not frames:
        return pd.DataFrame(columns=[*grid, *TIDY_VALUES, *RUN_IDS])
    long = pd.concat(frames)
    # a stable order, whatever order the store returned the runs in: the grid (numbers as numbers), the metrics
    order = {k: i for i, k in enumerate(_keys(runs))}
    numeric = {"ktrain", "n", "seed", "alpha", "beta"}
    long = long.sort_values([*grid, "key"], kind="stable", na_position="first", key=lambda s: (
        s.map(order) if s.name == "key" else pd.to_numeric(s, errors="coerce") if s.name in numeric else s))
    cols = [*grid, *TIDY_VALUES, *[c for c in COUNTS.values() if c in long], *RUN_IDS]
    return long[cols].reset_index(drop=True)


def metric_names(long: pd.DataFrame, mechanism: bool = True) -> dict[str, str]:
    """tidy key -> display name of the metrics measured (a value in some row), in table order (_rank); the
    mapping add_paper and paper_columns.complete take."""
    rows = long[long["value"].notna()]
    if not mechanism:
        rows = rows[rows["key"].str.startswith("img/")]
    pairs = sorted(dict.fromkeys(zip(rows["key"], rows["metric"])), key=lambda p: _rank(p[0]))
    several = {k for k, _ in pairs if sum(k == j for j, _ in pairs) > 1}  # one key, several world labels
    return {(f"{k}:{m}" if k in several else k): m for k, m in pairs}
