"""Tiny-world evaluators: a CLIP and a DINO trained on the synthetic world, and their check.

Why it exists: no pretrained CLIP or DINO weights exist offline, so the tiny profile trains its
own, through the same classes the metrics load (open_clip `CLIP`, a timm `VisionTransformer`),
on train-split identities only. Training is kept out of the scoring modules: `metrics.clip` and
`metrics.dino` only load and score.

- `world`: the synthetic world's views, canvases, captions, recolourings and crops;
- `clip_training`: the tiny CLIP (contrastive on scenes and subject crops) and its folder;
- `dino_training`: the tiny DINO (self-distillation on two renderings of a subject) and its folder;
- `validation`: ROC-AUCs and caption retrieval on test-split identities, which training never saw;
- `shape_training`: the places world's shape classifier (`Shape-Acc`), trained on real place crops.

`train_evaluators(out)` (or `python -m metrics.tiny_evaluators OUT`) writes `clip/` and `dino/`
(loadable as `local-dir:` models), in the places world `shape/`, `metrics_config.json` (the tiny profile's metrics config) and
`validation.json`. Their numbers are tiny-world numbers: comparable within this world only.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mosaic.data.synthetic import SyntheticConfig
from mosaic.infra.runfolder import atomic_dir

from ..clip import ClipModel
from ..dino import DinoModel
from .clip_training import save_clip, train_clip
from .dino_training import save_dino, train_dino
from .shape_training import save_shape_classifier, train_shape_classifier
from .validation import check_evaluators, held_out_views
from .world import clip_canvases, rendering_pairs

__all__ = ["EvaluatorSettings", "metrics_config", "train_evaluators"]


def metrics_config(out: Path | None = None, places: bool = False) -> dict[str, Any]:
    """The tiny profile's metrics config pointing at the evaluators in `out`; without `out`, paths relative
    to the folder of the `metrics_config.json` written into it (metrics.config.load_config resolves them).
    `places`: with the per-subject section (metrics.subjects) and its shape classifier."""
    where = (lambda name: (out / name).resolve()) if out is not None else (lambda name: name)
    clip = {"model": f"local-dir:{where('clip')}", "world": "tiny"}
    dino = {"model": f"local-dir:{where('dino')}", "world": "tiny"}
    subjects = {"subjects": {"model": f"local-dir:{where('shape')}"}} if places else {}
    return {"clip_i": clip, "clip_t": dict(clip), "dino": dino, "ip_sim": {"localiser": "masks", "max_instances": 3},
            "mechanism": {}, **subjects}


@dataclass(frozen=True)
class EvaluatorSettings:
    """One run of `train_evaluators`: each trainer's step count (`shape_steps`: the places world's shape
    classifier), the seed, the number of train-split samples rendered, and an optional cap on each trainer's
    wall time (`max_seconds`). The defaults are the tiny profile's."""

    clip_steps: int = 1200
    dino_steps: int = 400
    shape_steps: int = 600
    seed: int = 0
    n_train: int = 1500
    max_seconds: float | None = None


def train_evaluators(out: str | os.PathLike, settings: EvaluatorSettings = EvaluatorSettings(),
                     cfg: SyntheticConfig | None = None, overwrite: bool = False, log=print) -> Path:
    """Train both evaluators on train-split identities, check them on test identities, and
    write them with their config and check results into `out` (atomically). Step counts make
    a run reproducible; `settings.max_seconds` optionally caps each trainer's wall time."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: evaluators already exist (pass overwrite=True to replace them)")
    cap = math.inf if settings.max_seconds is None else settings.max_seconds
    seed, n_train = settings.seed, settings.n_train
    t0 = time.monotonic()
    data = clip_canvases("train", n_train, seed, cfg=cfg)
    pairs = rendering_pairs("train", n_train, seed, cfg)
    log(f"{len(data)} CLIP canvases, {len(pairs)} rendering pairs ({time.monotonic() - t0:.0f}s)")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        t_clip = time.monotonic()
        save_clip(train_clip(data, cap, seed, max_steps=settings.clip_steps, cfg=cfg, log=log), tmp / "clip")
        t_dino = time.monotonic()
        save_dino(train_dino(pairs, cap, seed, max_steps=settings.dino_steps, log=log), tmp / "dino")
        t_end = time.monotonic()
        places = cfg is not None and cfg.layout == "places"
        shape = {}
        if places:
            clf, shape = train_shape_classifier(cfg, n_train, settings.shape_steps, seed=seed, log=log)
            save_shape_classifier(clf, tmp / "shape")
        cfg_tmp = metrics_config(tmp)
        result = check_evaluators(ClipModel("clip_i", cfg_tmp["clip_i"]["model"]), DinoModel("dino", cfg_tmp["dino"]),
                                  held_out_views(cfg=cfg))
        result.update(clip_steps=settings.clip_steps, dino_steps=settings.dino_steps,
                      clip_seconds=round(t_dino - t_clip, 1), dino_seconds=round(t_end - t_dino, 1), seed=seed,
                      n_train_samples=n_train,
                      world="tiny: comparable within the synthetic world only", **shape)
        log(json.dumps(result, indent=2))
        (tmp / "validation.json").write_text(json.dumps(result, indent=2))
        (tmp / "metrics_config.json").write_text(json.dumps(metrics_config(places=places), indent=2))
    return out
