"""Figures of the workflow: sample sheets with attention overlays, the scaling plot, the sweep heat map.

Why it exists: the report shows what the tables summarise. A sample sheet puts, for a few
generated images, the references next to the image and each reference's attention over the
target (the sampler's maps, `mosaic sample --attention`) overlaid on it; the scaling plot draws
each metric against the number of subjects per method with error bars; the sweep heat map draws
each metric over the alpha x beta grid; the ablation's attention folder collects, per method, the
sample sheet and the teacher-forced attention figure of one evaluation run from its MLflow
artifacts. Every PNG and folder is written atomically (mosaic.infra.runfolder).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from mosaic.infra.runfolder import atomic_dir, atomic_file


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 90) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path) as tmp:  # keeps the suffix: savefig picks the format from it
            fig.savefig(tmp, dpi=dpi)
    finally:
        _plt().close(fig)
    return path


def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def sample_sheet(folder: str | os.PathLike, path: str | os.PathLike, n: int = 4, title: str = "") -> Path:
    """Rows: the first `n` images of a `mosaic sample` folder. Columns: the generated image, then per
    reference the reference and, under it, its attention map (scaled to its maximum) over the image."""
    plt = _plt()
    folder = Path(folder)
    lines = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines() if x.strip()][:n]
    kmax = max(len(rec["references"]) for rec in lines)
    fig, axes = plt.subplots(2 * len(lines), 1 + kmax, figsize=(1.5 * (1 + kmax), 3.0 * len(lines)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    heat = plt.get_cmap("inferno")
    for i, rec in enumerate(lines):
        img = _rgb(folder / rec["image"])
        axes[2 * i, 0].imshow(img)
        axes[2 * i, 0].set_title(rec["id"], fontsize=6)
        grey = img.mean(-1, keepdims=True) / 255
        maps = rec.get("meta", {}).get("attention_maps") or []
        for k, ref in enumerate(rec["references"]):
            axes[2 * i, 1 + k].imshow(_rgb(Path(ref["image"]) if Path(ref["image"]).is_absolute()
                                           else folder / ref["image"]))
            axes[2 * i, 1 + k].set_title((ref.get("phrase") or ref.get("word") or f"ref {k}")[:24], fontsize=6)
            if k < len(maps):
                a = _rgb(folder / maps[k])[..., 0] / 255.0
                axes[2 * i + 1, 1 + k].imshow(np.clip(0.4 * grey + 0.6 * heat(a)[..., :3], 0, 1))
        axes[2 * i + 1, 0].text(0.5, 0.5, "attention\nper reference ->", ha="center", va="center", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def scaling_plot(table: pd.DataFrame, metrics: list[str], path: str | os.PathLike, title: str = "",
                 reference: dict[str, str] | None = None) -> Path:
    """One panel per metric: mean vs n (subjects per test sample), one line per (method, ktrain), error bars = std.
    `table` has columns method, ktrain, n and '<metric> mean' / '<metric> std' for each metric; `reference`
    maps a metric to a column drawn as a dashed line in its panel (e.g. leakage at chance)."""
    plt = _plt()
    reference = reference or {}
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    several_k = table.loc[table["ktrain"].astype(int) > 0, "ktrain"].nunique() > 1
    for ax, metric in zip(axes.flat, metrics):
        for (method, ktrain), g in table.groupby(["method", "ktrain"], sort=False):
            g = g.sort_values("n")
            if int(ktrain) == 0:  # a bound (the real targets, or their backgrounds): no training, a dashed line
                if g[f"{metric} mean"].isna().all():  # e.g. the mechanism metrics: a bound has no attention
                    continue
                ax.plot(g["n"].astype(float), g[f"{metric} mean"], "--", color="0.45" if method == "floor" else "0.1",
                        label=method)
                continue
            label = f"{method} (train K<={ktrain})" if several_k else method
            ax.errorbar(g["n"].astype(float), g[f"{metric} mean"], yerr=g[f"{metric} std"].fillna(0), marker="o",
                        capsize=3, label=label)
        if metric in reference:
            ref = table.groupby("n")[f"{reference[metric]} mean"].mean()
            ax.plot(ref.index.astype(float), ref.values, "k--", label=reference[metric])
            ax.legend(fontsize=7)
        ax.set_xlabel("subjects per test sample (n)")
        ax.set_title(metric, fontsize=9)
        ax.set_xticks(sorted(table["n"].astype(float).unique()))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def sweep_heatmap(table: pd.DataFrame, metrics: list[str], path: str | os.PathLike, title: str = "") -> Path:
    """One heat map per metric over alpha (rows) x beta (columns), cells annotated with mean +- std."""
    plt = _plt()
    alphas = sorted(table["alpha"].astype(float).unique())
    betas = sorted(table["beta"].astype(float).unique())
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    for ax, metric in zip(axes.flat, metrics):
        grid = np.full((len(alphas), len(betas)), np.nan)
        for _, r in table.iterrows():
            grid[alphas.index(float(r["alpha"])), betas.index(float(r["beta"]))] = r[f"{metric} mean"]
        im = ax.imshow(grid, cmap="viridis", origin="lower")
        for _, r in table.iterrows():
            i, j = alphas.index(float(r["alpha"])), betas.index(float(r["beta"]))
            sd = r[f"{metric} std"]
            ax.text(j, i, f"{r[f'{metric} mean']:.1f}" + ("" if pd.isna(sd) else f"\n±{sd:.1f}"), ha="center",
                    va="center", fontsize=7, color="w")
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_xlabel("beta (MDL)")
        ax.set_ylabel("alpha (SCAL)")
        ax.set_title(metric, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def attention_figures(runs: pd.DataFrame, uri: str, methods: list[str], out: str | os.PathLike) -> Path:
    """The folder `out` of attention figures: per method, <method>_sampled.png and <method>_teacher_forced.png,
    the sheet.png / mechanism.png artifacts of its lowest-seed evaluation run on its largest held-out n
    (`runs`: the study's evaluation runs, as load_runs returns them; `uri`: their tracking store)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    with atomic_dir(Path(out), overwrite=True) as tmp:
        for method in methods:
            g = runs[runs["tags.method"] == method].copy()
            if g.empty:
                continue
            g["_seed"] = g["tags.seed"].fillna("0").replace("", "0").astype(int)  # a bound has no seed
            g["_n"] = g["tags.n"].fillna("0").replace("", "0").astype(int)
            best = g.sort_values(["_seed", "_n"], ascending=[True, False]).iloc[0]
            names = {a.path for a in client.list_artifacts(best["run_id"])}
            with tempfile.TemporaryDirectory() as d:
                for art, suffix in (("sheet.png", "sampled"), ("mechanism.png", "teacher_forced")):
                    if art in names:
                        local = client.download_artifacts(best["run_id"], art, d)
                        shutil.copy(local, tmp / f"{method}_{suffix}.png")
    return Path(out)
