"""Metric configuration: one section per metric naming its model, weights and choices.

The `paper` profile is the published protocols with the paper-profile weights left to
fill in (a missing one fails with the key and the path to provide). The tiny profile is
written by `metrics.tiny_evaluators.train_evaluators` as `metrics_config.json` next to the
trained evaluators. A config file (YAML or JSON) may hold the sections at top level or
under a `metrics:` key; its sections replace the profile's, key by key.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from .dino import PROTOCOL as DINO_PROTOCOL

PAPER: dict[str, dict[str, Any]] = {
    # one CLIP for both, as DreamBench++ does (ViT-L-14 stays a choice); openai tags load with QuickGELU
    "clip_i": {"protocol": "dreambench++", "model": "ViT-B-32", "pretrained": "openai"},
    "clip_t": {"protocol": "dreambench++", "model": "ViT-B-32", "pretrained": "openai"},
    "dino": {"protocol": "xverse", "model": "vit_small_patch16_224.dino", "weights": None, **DINO_PROTOCOL},
    "id_sim": {"protocol": "xverse", "detector": None, "weights": None, "threshold": 0.8,
               "model_root": None, "model_name": "antelopev2", "det_size": 640},
    "ip_sim": {"protocol": "xverse", "detector": None, "segmenter": None, "max_instances": 3},
    "hpsv21": {"protocol": "hpsv2", "model": "ViT-H-14", "checkpoint": None},
    "hpsv3": {"checkpoint": None},  # scored in workflow/envs/hpsv3.yaml (metrics.hps_job)
    "dpg": {"protocol": "xverse", "vqa": None, "questions": []},  # questions: XVerseBench_*_DSG.json
    "aes": {"protocol": "xverse", "encoder": None, "head": None},
    "unified_reward": {"model": None},
    "mechanism": {},
    "subjects": {"model": None},  # the tiny places world's per-subject scores (metrics.subjects); no paper use
}
PROFILES = {"paper": PAPER}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def sections() -> list[str]:
    """The config sections of the registered metrics."""
    from .evaluate import METRICS  # lazy: importing evaluate registers every metric (and loads torch)

    return sorted({cls.config_key for cls in METRICS.values()})


def load_config(path: str | Path | None = None, profile: str | None = "paper") -> dict[str, Any]:
    """The profile's sections, overridden by the file's (`metrics:` key or top level)."""
    if profile is not None and profile not in PROFILES:
        raise ValueError(f"unknown metrics profile {profile!r}; known: {', '.join(PROFILES)}")
    cfg = copy.deepcopy(PROFILES[profile]) if profile else {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: metrics config not found")
        text = path.read_text()
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
        data = data.get("metrics", data) if isinstance(data, dict) else data
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ValueError(f"{path}: metrics config must map section names to mappings")
        known = sections()
        for key in data:  # a misspelt section would otherwise be ignored and its metric silently not run
            if key not in known:
                raise ValueError(f"{path}: section {key!r} is no metric's config section; known: {', '.join(known)}")
        cfg = merge(cfg, _resolve_local_dirs(data, path.parent))
    return cfg


def _resolve_local_dirs(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A relative `local-dir:` model path is relative to the config file's folder (a shipped evaluators
    folder is relocatable); absolute ones are kept."""
    prefix, out = "local-dir:", {}
    for name, sec in data.items():
        model = sec.get("model")
        if isinstance(model, str) and model.startswith(prefix) and not Path(model[len(prefix):]).is_absolute():
            sec = {**sec, "model": f"{prefix}{(folder / model[len(prefix):]).resolve()}"}
        out[name] = sec
    return out
