"""Evaluate generated images: the tidy per-(image, reference, metric) table and its aggregate.

`evaluate(items, cfg)` runs the selected metrics in batches (images loaded once per batch,
models once per evaluation, reference embeddings cached) and returns three things:
- `table`: one row per (image, reference, metric); image-level metrics (CLIP-T, HPS) have
  reference <NA>. `value` is NaN with a `reason` when a metric does not apply or cannot
  run. `model`, `weights`, `protocol` (the published protocol's name, e.g. "dreambench++"),
  `procedure` (what was done, in words) and `world` record every choice behind the value;
  `label` marks evaluator-world metrics, e.g. "CLIP-I (tiny-world)": comparable within
  that world only.
- `aggregate`: per (benchmark, scenario, method, metric): the mean over (image, reference)
  pairs and, for per-reference metrics, the mean over images of the minimum over references
  (a missing subject drags it down), with counts of rows and of NaNs by reason.
- `info`: metric identities, reference-cache hit rates, item count.
`evaluate_folder` does the same for a folder + manifest and writes the three files atomically.

Inputs are checked before any scoring: every image is read once (missing, corrupt, 16-bit
or transparent images fail naming the manifest line and field). An item with no references
(K = 0) gets, for each per-reference metric, one NaN row with the reason "K = 0: no
references", so it is counted (`n_nan`) rather than silently absent.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mosaic.data.records import load_image
from mosaic.infra.runfolder import MANIFEST_FILE, atomic_dir

from . import attention, clip, dino, faces, hps, ipsim  # noqa: F401  (register the metrics)
from . import aes, dpg, unified_reward  # noqa: F401  (XVerseBench DPG and AES; UnifiedReward)
from . import subjects  # noqa: F401  (the places world's per-subject scores)
from .manifest import Item, read_items
from .registry import METRICS, Context, MetricUnavailable, Row

TABLE, AGGREGATE, INFO = "metrics.csv", "aggregate.csv", "evaluation.json"
ITEM_COLUMNS = ("benchmark", "scenario", "entry")
IDENTITY = ("model", "weights", "protocol", "procedure", "world")  # metrics.registry.Metric.identity()


def label(metric: str, world: str) -> str:
    if not world:
        return metric
    return f"{metric} ({'tiny-world' if world == 'tiny' else world})"


def select(cfg: dict[str, Any], names: list[str] | None) -> list[str]:
    """The requested metrics (all whose config section is present, by default)."""
    if names is None:
        return [n for n, cls in METRICS.items() if cls.config_key in cfg]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric name(s) {', '.join(map(repr, unknown))}; known: {', '.join(METRICS)}")
    return list(names)


def _unavailable_rows(cls, items: list[Item], reason: str) -> list[Row]:
    if "references" in cls.inputs:
        return [Row(i, j, math.nan, reason) for i, it in enumerate(items) for j in range(len(it.references))]
    return [Row(i, None, math.nan, reason) for i in range(len(items))]


def check_inputs(items: list[Item]) -> None:
    """Read every image the evaluation will read, once: a bad one fails here, naming its manifest line and field."""
    seen: set[tuple[str, str]] = set()
    for it in items:
        src = f" at {it.source}" if it.source else f" of item {it.id}"
        files = [(it.image, "RGB", "image")]
        for j, r in enumerate(it.references):
            files += [(r.image, "RGB", f"references[{j}].image")] + ([(r.mask, "L", f"references[{j}].mask")]
                                                                     if r.mask else [])
        for path, mode, field in files:
            if (str(path), mode) not in seen:
                seen.add((str(path), mode))
                load_image(path, mode, field=field + src)


def evaluate(items: list[Item], cfg: dict[str, Any], metrics: list[str] | None = None, batch_size: int = 16,
             missing: str = "raise", ctx: Context | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Score `items`; `missing="nan"` turns a metric that cannot load into NaN rows with the reason."""
    if missing not in ("raise", "nan"):
        raise ValueError(f"missing={missing!r}: must be 'raise' or 'nan'")
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size}: must be at least 1")
    ctx = ctx or Context(cfg)
    runners, identities = {}, {}
    for name in select(cfg, metrics):
        cls = METRICS.get(name)
        try:
            runners[name] = cls(cfg, ctx)
            identities[name] = {k: str(runners[name].identity().get(k, "")) for k in IDENTITY}
        except MetricUnavailable as e:
            if missing == "raise":
                raise
            # not loaded: the configured protocol still names what the missing value stands for
            runners[name] = str(e)
            identities[name] = {**dict.fromkeys(IDENTITY, ""), "protocol": cls.protocol_in(cfg),
                                "world": str((cfg.get(cls.config_key) or {}).get("world", ""))}
    check_inputs(items)
    records = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        images = [load_image(it.image) for it in batch]
        for name, runner in runners.items():
            rows = (_unavailable_rows(METRICS.get(name), batch, runner) if isinstance(runner, str)
                    else runner.score(batch, images))
            if "references" in METRICS.get(name).inputs:  # K = 0: counted as NaN, not silently absent
                rows += [Row(i, None, math.nan, "K = 0: no references") for i, it in enumerate(batch)
                         if not it.references]
            ident = identities[name]
            for r in rows:
                if math.isnan(r.value) and not r.reason:
                    raise RuntimeError(f"{name} gave NaN without a reason for {batch[r.item].id}")
                it = batch[r.item]
                ref = it.references[r.reference] if r.reference is not None else None
                records.append({
                    "id": it.id, "image": str(it.image), "method": it.method, "seed": it.seed,
                    **{k: it.info.get(k, "") for k in ITEM_COLUMNS},
                    "reference": r.reference, "reference_image": str(ref.image) if ref else "",
                    "subject": ref.word if ref else "", "category": ref.category if ref else "",
                    "metric": name, "label": label(name, ident["world"]),
                    "value": float(r.value), "reason": r.reason, **ident,
                })
    columns = ["id", "image", "method", "seed", *ITEM_COLUMNS, "reference", "reference_image", "subject",
               "category", "metric", "label", "value", "reason", *IDENTITY]
    table = pd.DataFrame.from_records(records, columns=columns)
    table["reference"] = table["reference"].astype("Int64")
    table["seed"] = table["seed"].astype("Int64")
    info = {"n_items": len(items), "metrics": identities, "cache": ctx.cache_stats()}
    return table, aggregate(table), info


def _reasons(values: pd.Series, reasons: pd.Series) -> str:
    counts = reasons[values.isna()].value_counts()
    return "; ".join(f"{r or 'no reason'}: {n}" for r, n in counts.items())


def aggregate(table: pd.DataFrame) -> pd.DataFrame:
    keys = ["benchmark", "scenario", "method", "metric", "label"]
    out = []
    for key, g in table.groupby(keys, sort=False, dropna=False):
        first = g.iloc[0]
        common = {**dict(zip(keys, key)), **{k: first.get(k, "") for k in IDENTITY}}  # older tables: no procedure
        v = g["value"]
        out.append({**common, "statistic": "mean over (image, reference) pairs" if g["reference"].notna().any()
                    else "mean over images", "value": v.mean(), "std": v.std(ddof=0), "n": int(v.notna().sum()),
                    "n_nan": int(v.isna().sum()), "nan_reasons": _reasons(v, g["reason"])})
        if g["reference"].notna().any():
            per_image = g.groupby("id", sort=False)["value"].min()  # NaN rows skipped; all-NaN -> NaN
            out.append({**common, "statistic": "mean over images of the min over references",
                        "value": per_image.mean(), "std": per_image.std(ddof=0), "n": int(per_image.notna().sum()),
                        "n_nan": int(per_image.isna().sum()), "nan_reasons": ""})
    cols = [*keys, "statistic", "value", "std", "n", "n_nan", "nan_reasons", *IDENTITY]
    return pd.DataFrame(out, columns=cols)


def image_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (image, metric): mean and minimum over references (NaN rows skipped)."""
    g = table.groupby(["id", "metric"], sort=False)["value"]
    return pd.DataFrame({"mean": g.mean(), "min": g.min()}).reset_index()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj if isinstance(obj, (str, int, float, bool, type(None))) else str(obj)


def evaluate_folder(folder: str | os.PathLike, cfg: dict[str, Any], metrics: list[str] | None = None,
                    manifest: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                    batch_size: int = 16, missing: str = "raise") -> Path:
    """Evaluate `folder`/`manifest` and write metrics.csv, aggregate.csv and evaluation.json
    into `out` (default `folder`/eval), which appears only when complete."""
    folder = Path(folder)
    manifest_path = (Path(manifest) if manifest and Path(manifest).is_absolute()
                     else folder / (manifest or MANIFEST_FILE))
    table, agg, info = evaluate(read_items(manifest_path), cfg, metrics, batch_size, missing)
    out = Path(out) if out else folder / "eval"
    with atomic_dir(out, overwrite=True) as tmp:
        table.to_csv(tmp / TABLE, index=False)
        agg.to_csv(tmp / AGGREGATE, index=False)
        info.update(manifest=str(manifest_path), config=cfg)
        (tmp / INFO).write_text(json.dumps(_jsonable(info), indent=2, sort_keys=True))
    return out
