"""`uno`: UNO's two mechanisms on the shared backbone.

Reproduces (Wu et al., "Less-to-More Generalization", bytedance/UNO):
- UnoPE: references get diagonal RoPE offsets (`model.pos_scheme = diagonal`; reference k
  starts at (H_t + k*H_ref, W_t + k*W_ref), as `uno/flux/sampling.py::prepare_multi_ip`, pe="d");
- progressive cross-modal alignment: a curriculum that trains on single-subject samples first
  and then on multi-subject ones (`data.curriculum`: the first stage keeps the samples of
  data.train with K = 1; by default it lasts half of train.steps, a choice of this harness:
  the paper's stage lengths are for its own data size).
Leaves out: UNO's in-context data synthesis pipeline (the shared data is used instead) and
its no-correspondence training objective is kept (SCAL and MDL are off, as in UNO).
"""
from __future__ import annotations

import json
import os

from .base import ControlledBaseline


class Uno(ControlledBaseline):
    name = "uno"
    SETTINGS = ("model.pos_scheme=diagonal", "loss.alpha=0", "loss.beta=0")

    @classmethod
    def config(cls, config: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()):
        cfg = super().config(config, overrides)
        if cfg.data.curriculum:  # the user gave the stages explicitly
            return cfg
        stage = {"train": cfg.data.train, "steps": max(1, cfg.train.steps // 2), "max_k": 1}
        return super().config(config, [*overrides, f"data.curriculum={json.dumps([stage])}"])
