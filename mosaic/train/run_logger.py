"""The training run's MLflow logger: a new run with every resolved config value as a param, or the stored one.

Why it exists: params, provenance tags and per-step metrics of a training go to one MLflow run,
reopened when the run resumes (mosaic.infra.tracking.run).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import Config, flatten
from ..infra.runfolder import CONFIG_FILE
from ..infra.tracking.run import RunLogger, provenance, resolve_tracking_uri


def start_logger(cfg: Config, out: Path, step: int, world: int, device: torch.device, bf16: bool,
                 calibration: dict | None = None) -> RunLogger:
    """The run's logger; params: the resolved config (calibrated loss weights included) and `calibration/...`."""
    logger = RunLogger(resolve_tracking_uri(cfg.tracking.tracking_uri, out), cfg.tracking.experiment, out)
    tags = {"variant": cfg.variant, "profile": cfg.profile, "mode": cfg.train.mode, "flavour": cfg.model.flavour,
            "seed": str(cfg.train.seed), "world_size": str(world),
            "device": device.type, "precision": "bf16" if bf16 else "fp32",
            **provenance()}
    params = {**flatten(cfg), **{f"calibration/{k}": v for k, v in (calibration or {}).items()}}
    logger.start(cfg.tracking.run_name or cfg.variant, params, tags, step)
    logger.log_artifact(out / CONFIG_FILE)
    return logger


def log_step(logger: RunLogger, losses: dict[str, torch.Tensor], lr: float, started: float, step: int,
             log_every: int) -> None:
    """The step's losses ("loss/..."), MDL weight, learning rate and wall time ("train/...": names grouped by
    prefix, as the MLflow UI shows them); buffered, flushed every `log_every` steps."""
    m = {f"train/{k}" if k == "beta" else f"loss/{k}": v.item() for k, v in losses.items()}
    logger.log_metrics({**m, "train/lr": lr, "train/step_time": time.perf_counter() - started}, step)
    if step % log_every == 0:
        logger.flush()
