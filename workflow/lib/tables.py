"""The paper's tables, built from the MLflow runs of a study (mlflow.search_runs), never from side files.

Why it exists: every number in a table must be traceable to the runs it came from. An evaluation
run holds one cell (one training seed on one evaluation set of n subjects): image metrics
`img/<metric>` (means over images; labels such as "CLIP-I (tiny-world)" in tags `label/<metric>`)
and mechanism metrics `mech/alignment_acc`, `mech/leakage`, `mech/subject_leakage` (%).
Each table comes in two forms, one computed from the other:
- the tidy long table (`tidy`): one row per evaluation run x metric, with the run's grid tags, value,
  protocol, reason and the MLflow ids of the evaluation run and its training;
- the wide table, computed from the tidy rows (`summarise`): a row per group, per metric the mean, the
  standard deviation (pandas, ddof=1; NaN for one cell), the count of values, the standard error of the
  mean (std / sqrt(count)) and "mean ± SE"; `n seeds` counts the group's seeds. Its internal form keeps
  the numbers (`<metric> mean/std/se/cells/protocol`, run ids; the figures and the paper gaps read them);
  `readable` is what a reader gets (the study's CSV, Markdown and LaTeX: `write_tables`).
With the paper's reported values (../shared/paper/mosaic_reported.csv) a row also carries
`<metric> paper` and `<metric> gap` (measured - reported) where the paper reports that cell; every
metric of the paper's table is a column, NaN with its reason in `notes` when not measured. A gap is
printed only for a value computed as the paper's was: in the paper profile, under the paper's protocol
(PAPER_PROTOCOLS, against the run tags `protocol/<metric>`), on all the prompts of the benchmark's
protocol (`n run / n in protocol`); otherwise `notes` says why there is none.

- ablation: method (variant) x benchmark/scenario x n (held-out sets: one row per subject count, never
  pooled), over seeds;
- sweep: alpha x beta, over seeds and n;
- scaling: method x train K x n, over seeds;
- main: DreamBench single/multi, method, over seeds (with NaN reasons, e.g. a missing checkpoint);
- xversebench: XVerseBench single/multi, method, with the benchmark's runnable and skipped entries.
"""
from __future__ import annotations

import itertools
import numbers
import os
from pathlib import Path
from typing import Any

import pandas as pd

from mosaic.runfolder import atomic_file, atomic_write

from . import paper_columns

CHANCE = "leakage at chance (%)"  # the leakage of a uniform attention: the share of other subjects' tokens
SUBJECT_CHANCE = "subject leakage at chance (%)"  # the same for subject leakage: about (n-1)/n
CHANCES = {"leakage (%)": CHANCE, "subject leakage (%)": SUBJECT_CHANCE}  # metric -> its chance column
MECHANISM = {"metrics.mech/alignment_acc": "alignment acc (%)", "metrics.mech/leakage": "leakage (%)",
             "metrics.mech/leakage_chance": CHANCE, "metrics.mech/subject_leakage": "subject leakage (%)",
             "metrics.mech/subject_leakage_chance": SUBJECT_CHANCE}
ORDER = ["CLIP-I", "CLIP-T", "DINO", "UnifiedReward", "HPSv2.1", "HPSv3", "DPG", "ID-Sim", "IP-Sim", "AES",
         "AVG", "Own-Ref", "Other-Ref", "Shape-Acc"]  # the papers' column order, then the places world's per-subject scores
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


GRID = ("study", "method", "label", "benchmark", "scenario", "evalset", "ktrain", "n", "seed", "alpha", "beta")
COUNTS = {"metrics.count/prompts": "prompts", "metrics.count/images": "images", "metrics.entries/total": "entries_total",
          "metrics.entries/runnable": "entries_runnable", "metrics.entries/skipped": "entries_skipped"}
TIDY_VALUES = ["metric", "key", "value", "protocol", "reason"]  # the tidy table's per-metric columns
RUN_IDS = ["eval_run_id", "train_run_id"]
NUMERIC = (" mean", " std", " se", " cells", " protocol")  # the internal table's per-metric numeric columns


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
    return f"% {title}: from the study's MLflow runs (workflow/lib/tables.py); needs \\usepackage{{booktabs}}\n{body}"


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
