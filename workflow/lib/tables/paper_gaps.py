"""The paper's reported values beside the measured ones: `<metric> paper` and `<metric> gap`.

Why it exists: a gap is printed only for a value computed as the paper's was (the paper profile, the paper's
protocol, all the benchmark's prompts); this module holds that rule (`gap_blocker`) and the protocols of the
paper's cells (PAPER_PROTOCOLS), and says in `notes` why any other cell has no gap.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .summarise import COVERAGE

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
