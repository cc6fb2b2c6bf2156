"""The paper's tables, built from the MLflow runs of a study (mlflow.search_runs), never from side files.

Why it exists: every number in a table must be traceable to the runs it came from. An evaluation
run holds one cell (one training seed on one evaluation set of n subjects): image metrics
`img/<metric>` (means over images; labels such as "CLIP-I (tiny-world)" in tags `label/<metric>`)
and mechanism metrics `mech/alignment_acc`, `mech/leakage`, `mech/subject_leakage` (%). A table row
groups cells and reports, per metric, the mean, the standard deviation (pandas, ddof=1; NaN for one cell) and a
"mean ± std" column, plus the MLflow run ids of its evaluation runs and of their trainings.
With the paper's reported values (../shared/paper/mosaic_reported.csv) a row also carries
`<metric> paper` and `<metric> gap` (measured - reported) where the paper reports that cell; every
metric of the paper's table is a column, NaN with its reason in `notes` when not measured. A gap is
printed only for a value computed as the paper's was: in the paper profile, under the paper's protocol
(PAPER_PROTOCOLS, against the run tags `protocol/<metric>`), on all the prompts of the benchmark's
protocol (`n run / n in protocol`); otherwise `notes` says why there is none.

- ablation: method (variant) x benchmark/scenario, over seeds and n;
- sweep: alpha x beta, over seeds and n;
- scaling: method x train K x n, over seeds;
- main: DreamBench single/multi, method, over seeds (with NaN reasons, e.g. a missing checkpoint);
- xversebench: XVerseBench single/multi, method, with the benchmark's runnable and skipped entries.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from mosaic.runfolder import atomic_file

from . import paper_columns

CHANCE = "leakage at chance (%)"  # the leakage of a uniform attention: the share of other subjects' tokens
SUBJECT_CHANCE = "subject leakage at chance (%)"  # the same for subject leakage: about (n-1)/n
CHANCES = {"leakage (%)": CHANCE, "subject leakage (%)": SUBJECT_CHANCE}  # metric -> its chance column
MECHANISM = {"metrics.mech/alignment_acc": "alignment acc (%)", "metrics.mech/leakage": "leakage (%)",
             "metrics.mech/leakage_chance": CHANCE, "metrics.mech/subject_leakage": "subject leakage (%)",
             "metrics.mech/subject_leakage_chance": SUBJECT_CHANCE}
ORDER = ["CLIP-I", "CLIP-T", "DINO", "UnifiedReward", "HPSv2.1", "HPSv3", "DPG", "ID-Sim", "IP-Sim", "AES",
         "AVG"]  # the papers' column order
PAPER_BENCHMARKS = {"dreambench": "DreamBench", "xversebench": "XVerseBench"}
# The protocol each of the paper's cells was computed under, per paper table and metric: the one place this is
# recorded (names as in metrics.registry.Metric.protocols). The paper names no CLIP/DINO code: its DreamBench
# numbers are taken as the DreamBench protocol as coded by DreamBench++ (CLIP ViT-B/32 for CLIP-I and CLIP-T) and
# as commonly coded for DINO (ViT-S/16, resize 256, crop 224: the `xverse` DINO step); its XVerseBench numbers
# are the XVerse kit's (eval/tools: RetinaFace + IR-SE50, Florence-2 + SAM2 + DINO, DSG + VQA, aesthetic v2.5).
_DREAMBENCH = {"CLIP-I": "dreambench++", "CLIP-T": "dreambench++", "DINO": "xverse"}
PAPER_PROTOCOLS: dict[str, dict[str, str]] = {
    "main": {**_DREAMBENCH, "HPSv3": "hpsv3", "UnifiedReward": "unifiedreward-qwen"},
    "ablation": dict(_DREAMBENCH),
    "xverse": {m: "xverse" for m in ("DPG", "ID-Sim", "IP-Sim", "AES", "AVG")},
}
COVERAGE = "n run / n in protocol"  # prompts run / prompts of the benchmark's protocol (all entries, runnable or not)


def load_runs(tracking_uri: str, experiment: str, kind: str = "eval") -> pd.DataFrame:
    """The study's active runs of one kind (eval / train), as mlflow.search_runs returns them."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    from mosaic.tracking import retry

    retry.client(tracking_uri)  # opens the store with the retry settings (busy timeout, locked-open retries)
    mlflow.set_tracking_uri(tracking_uri)
    runs = retry.call(tracking_uri, f"search {kind} runs of {experiment!r}", mlflow.search_runs,
                      experiment_names=[experiment], filter_string=f"tags.kind = '{kind}'", max_results=50000)
    if runs.empty:
        raise ValueError(f"{tracking_uri}: experiment {experiment!r} has no {kind} runs")
    return runs


def metric_columns(runs: pd.DataFrame, mechanism: bool = True) -> dict[str, str]:
    """runs column -> display name: the image metrics present (label from the runs' tags), then mechanism."""
    out = {}
    names = [c[len("metrics.img/"):] for c in runs.columns if c.startswith("metrics.img/")]
    for col in [f"metrics.img/{n}" for n in sorted(names, key=lambda n: (ORDER + [n]).index(n))]:
        if not col.endswith(".min") and runs[col].notna().any():
            metric = col[len("metrics.img/"):]
            labels = runs.get(f"tags.label/{metric}", pd.Series(dtype=object)).dropna().unique()
            out[col] = labels[0] if len(labels) == 1 else metric
    if mechanism:
        out.update({c: n for c, n in MECHANISM.items() if c in runs and runs[c].notna().any()})
    return out


def _fmt(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def _ids(values: pd.Series) -> str:
    return ";".join(dict.fromkeys(str(v) for v in values if isinstance(v, str) and v))


def _notes(g: pd.DataFrame) -> str:
    """The metrics' reasons (NaN values and protocol zeros such as "no face detected"), with their counts."""
    notes = {}
    for col in g.columns:
        if col.startswith("tags.reasons/"):
            for v in g[col].dropna():
                notes.setdefault(f"{col[len('tags.reasons/'):]}: {v}", None)
    return " | ".join(notes)


def summarise(runs: pd.DataFrame, by: list[str], metrics: dict[str, str]) -> pd.DataFrame:
    """One row per group of `by` (tags, e.g. "method"): per metric mean, std and "mean ± std" over the group's
    runs; `runs`, the seeds and n values covered, the metrics' reasons (notes), and the eval/train run ids."""
    rows = []
    for key, g in runs.groupby([f"tags.{b}" for b in by], sort=False, dropna=False):
        row: dict[str, Any] = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for col, name in metrics.items():
            v = pd.to_numeric(g[col], errors="coerce") if col in g else pd.Series(dtype=float)
            row[name] = _fmt(v.mean(), v.std())
            row[f"{name} mean"], row[f"{name} std"], row[f"{name} cells"] = v.mean(), v.std(), int(v.notna().sum())
            if col.startswith("metrics.img/"):  # the protocol names the runs recorded (metrics.evaluate)
                tag = g.get(f"tags.protocol/{col[len('metrics.img/'):]}", pd.Series(dtype=object))
                row[f"{name} protocol"] = ";".join(sorted({str(x) for x in tag.dropna() if str(x)}))
        row["runs"] = len(g)
        for tag in ("seed", "n"):
            if f"tags.{tag}" in g:
                vals = sorted({str(v) for v in g[f"tags.{tag}"].dropna() if str(v)}, key=lambda s: (len(s), s))
                row[f"{tag}s"] = ",".join(vals)
        row["notes"] = _notes(g)
        row["eval_run_ids"] = _ids(g["run_id"])
        row["train_run_ids"] = _ids(g["tags.train_run_id"]) if "tags.train_run_id" in g else ""
        rows.append(row)
    return pd.DataFrame(rows)


def read_paper(path: str | os.PathLike | None) -> pd.DataFrame | None:
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: the paper's reported values (config paper_values) not found")
    df = pd.read_csv(p)
    missing = {"table", "benchmark", "scenario", "method", "metric", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"{p}: missing columns {sorted(missing)}")
    return df


def add_paper(table: pd.DataFrame, paper: pd.DataFrame | None, paper_table: str, metrics: dict[str, str],
              paper_method: dict[str, str], profile: str = "paper") -> pd.DataFrame:
    """`<display> paper` (the reported value: same benchmark, scenario, method via `paper_method`, and metric,
    the display name without its world label) and `<display> gap` (measured mean - reported) where the value was
    computed as the paper's was (`gap_blocker`, its reason in notes). The paper's unmeasured metrics are columns
    already (workflow.lib.paper_columns.complete), their reasons in notes."""
    if paper is None:
        return table
    table = table.copy()
    ref = paper[paper["table"] == paper_table]
    names = list(metrics.values())
    notes = [[n] if n else [] for n in table.get("notes", pd.Series([""] * len(table), index=table.index))]
    for name in names:
        base = name.split(" (")[0]
        values, gaps = [], []
        for i, (_, r) in enumerate(table.iterrows()):
            hit = ref[(ref["benchmark"] == PAPER_BENCHMARKS.get(str(r.get("benchmark")), r.get("benchmark")))
                      & (ref["scenario"] == r.get("scenario")) & (ref["method"] == paper_method.get(r["method"], ""))
                      & (ref["metric"] == base)]
            reported = float(hit["value"].iloc[0]) if len(hit) else float("nan")
            why = gap_blocker(r, name, paper_table, profile) if len(hit) else ""
            if why and pd.notna(r.get(f"{name} mean")):  # a NaN cell: its own reason is in the notes already
                notes[i].append(f"{base}: no paper gap: {why}")
            values.append(reported)
            gaps.append(float("nan") if why else r[f"{name} mean"] - reported)
        table[f"{name} paper"], table[f"{name} gap"] = values, gaps
    table["notes"] = [" | ".join(n) for n in notes]
    return table


def gap_blocker(row: pd.Series, name: str, paper_table: str, profile: str) -> str:
    """Why a measured cell must not be compared with the paper's ("" when it may): another profile or world,
    another protocol, another subset of the prompts, or nothing measured."""
    base = name.split(" (")[0]
    if profile != "paper":
        return f"{profile} profile (comparable within its world only)"
    if name != base:
        return f"computed in another world ({name[len(base) + 2:-1]}): comparable within it only"
    if pd.isna(row.get(f"{name} mean")):
        return "not measured"
    want, got = PAPER_PROTOCOLS.get(paper_table, {}).get(base), row.get(f"{name} protocol")
    got = got if isinstance(got, str) else ""  # NaN: no run recorded it
    if want is None:
        return f"the paper's protocol for {base} in table {paper_table!r} is not recorded (tables.PAPER_PROTOCOLS)"
    if got != want:
        return f"measured under protocol {got or '(not recorded)'!r}, the paper's is {want!r}"
    coverage = row.get(COVERAGE)
    if not isinstance(coverage, str):
        return "the prompts run are not recorded (entries/total, prompts)"
    run, total = coverage.split(" / ")
    if run != total:
        return f"{run} of the protocol's {total} prompts run"
    return ""


def paper_names(methods: dict[str, dict], paper_table: str) -> dict[str, str]:
    """method -> its name in the paper's `paper_table` (config `paper`: one name, or a mapping per table)."""
    out = {}
    for m, v in methods.items():
        p = v.get("paper") or ""
        out[m] = p.get(paper_table, "") if isinstance(p, dict) else p
    return out


def _order(table: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    rank = {m: i for i, m in enumerate(methods)}
    return table.sort_values("method", key=lambda s: s.map(lambda m: rank.get(m, len(rank))), kind="stable")


def _front(table: pd.DataFrame, first: list[str], metrics: dict[str, str]) -> pd.DataFrame:
    """Column order: the keys, the "mean ± std" columns, paper/gap, then numbers, counts and run ids."""
    names = list(dict.fromkeys([*metrics.values(), *display_metrics(table)]))  # with the paper-only metrics
    shown = [c for c in [*first, COVERAGE] if c in table] + [n for n in names if n in table]
    shown += [c for n in names for c in (f"{n} paper", f"{n} gap") if c in table]
    return table[shown + [c for c in table.columns if c not in shown]]


def ablation_table(runs: pd.DataFrame, methods: dict[str, dict], paper: pd.DataFrame | None = None,
                   profile: str = "paper") -> pd.DataFrame:
    metrics = metric_columns(runs)
    t = summarise(runs, ["method", "benchmark", "scenario"], metrics)
    t.insert(1, "label", t["method"].map(lambda m: methods.get(m, {}).get("label", "")))
    t = add_coverage(t, runs, ["method", "benchmark", "scenario"])
    t = add_paper(t, paper, "ablation", metrics, paper_names(methods, "ablation"), profile)
    return _front(_order(t, list(methods)), ["method", "label", "benchmark", "scenario"], metrics)


def sweep_table(runs: pd.DataFrame) -> pd.DataFrame:
    metrics = metric_columns(runs)
    t = summarise(runs, ["alpha", "beta", "method"], metrics)
    t["alpha"], t["beta"] = t["alpha"].astype(float), t["beta"].astype(float)
    return _front(t.sort_values(["alpha", "beta"]), ["alpha", "beta", "method"], metrics)


def scaling_table(runs: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    metrics = metric_columns(runs)
    t = summarise(runs, ["method", "ktrain", "n"], metrics)
    # ktrain 0: a bound of the image metrics (mosaic.bounds), which trains nothing
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


def add_coverage(table: pd.DataFrame, runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """`n run / n in protocol` per row: the prompts its runs generated / the benchmark protocol's entries (runnable
    or not), where the runs logged both (benchmark evaluations); other rows get NaN."""
    if "metrics.entries/total" not in runs or "metrics.count/prompts" not in runs:
        return table
    table = table.copy()
    per = runs.groupby([f"tags.{b}" for b in by], sort=False, dropna=False)[
        ["metrics.count/prompts", "metrics.entries/total"]].max()
    cells = []
    for key in zip(*(table[b] for b in by)):
        run, total = per.loc[key] if key in per.index else (float("nan"), float("nan"))
        cells.append(f"{int(run)} / {int(total)}" if pd.notna(run) and pd.notna(total) else float("nan"))
    table[COVERAGE] = cells
    return table


def benchmark_table(runs: pd.DataFrame, benchmark: str, methods: dict[str, dict], paper: pd.DataFrame | None,
                    paper_table: str, profile: str = "paper") -> pd.DataFrame:
    """DreamBench (main) or XVerseBench: scenario x method over seeds, with prompt/entry counts."""
    runs = runs[runs["tags.benchmark"] == benchmark]
    if runs.empty:
        return pd.DataFrame(columns=["benchmark", "scenario", "method"])
    if paper_table == "xverse":
        runs = paper_columns.with_avg(runs)  # the kit's AVG per run (workflow.lib.paper_columns)
    metrics = metric_columns(runs, mechanism=False)
    t = summarise(runs, ["benchmark", "scenario", "method"], metrics)
    for col in ("prompts", "images", "entries/total", "entries/runnable", "entries/skipped"):
        if f"metrics.{col}" in runs:
            per = runs.groupby(["tags.scenario", "tags.method"], sort=False)[f"metrics.{col}"].max()
            t[col.replace("entries/", "")] = [per.get((s, m)) for s, m in zip(t["scenario"], t["method"])]
    t = add_coverage(t, runs, ["benchmark", "scenario", "method"])
    t, metrics = paper_columns.complete(t, metrics, paper_columns.paper_metrics(paper, paper_table))
    if paper_table == "xverse":
        t = _overall_identity(paper_columns.overall(t))
    t = add_paper(t, paper, paper_table, metrics, paper_names(methods, paper_table), profile)
    t = _order(t, list(methods)).sort_values("scenario", kind="stable")
    return _front(t, ["benchmark", "scenario", "method"], metrics)


def write_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write `table` to `path` atomically (mosaic.runfolder.atomic_file); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def display_metrics(table: pd.DataFrame) -> list[str]:
    """The display names of the metrics a table carries (columns with a "<name> mean" twin)."""
    return [c[: -len(" mean")] for c in table.columns if c.endswith(" mean")]
