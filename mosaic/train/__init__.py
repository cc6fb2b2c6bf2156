"""`mosaic train`: FLUX flow-matching training of the MOSAIC reference LoRA (or of the tiny base).

Why it exists: one trainer for every variant of the ablation, driven by one resolved config
(mosaic.config), running through DeepSpeed so the same code runs one CPU process (gloo, fp32)
or many GPUs (NCCL, bf16) under torchrun or the deepspeed launcher.

Per step (mosaic.flow, shared with the sampler and the mechanism evaluation): encode target and
references with the codec and the prompts with the text encoder; apply image / text / both
dropout; draw t from a logit-normal with FLUX's resolution shift; x_t = (1 - t) x0 + t noise; the
model predicts noise - x0 (MSE). In `lora` mode the attention probe rides along as the model's
attn_hook and L = L_diff + alpha L_SCA + beta(step) L_MD (mosaic.losses; no probe at all while
alpha and beta(step) are 0); in `base` mode the full transformer learns text-to-image without
references. A variant may add modules, forward inputs, hooks and losses through
`model.extension` (mosaic.extension), and train on a `data.curriculum` of datasets before data.train.

Exact resume: every random draw of step s (timesteps, noise, dropout, torch's global RNG for
in-model dropout) comes from a generator seeded by (seed, rank, s), and the data order of
epoch e is a permutation seeded by (seed, e); so the step number stored in a checkpoint
restores the RNG streams and the data position exactly, with no RNG state to carry. Model,
optimizer and LR-scheduler state go through `engine.save_checkpoint` / `load_checkpoint`.
A restart with the same output folder resumes from its latest checkpoint and reopens the
same MLflow run. A non-finite loss stops training with an error naming the step, before any
update or checkpoint of the bad state; SIGTERM saves a checkpoint, then exits.

Modules: `loop` (train(): a `Trainer` built, stepped by `train_step`, finished; top to bottom), `data`
(batches and dropout), `objective` (the loss of one batch), `checkpoint` (save, resume, export), `resume`
(the workflow's run-folder contract), `distributed` (process group and DeepSpeed engine, ZeRO 0-3),
`partitioned` (ZeRO-3's sliced weights: the EMA of each rank's slices, gathering for the export),
`callbacks` (fault injection, SIGTERM), `run_logger` (the run's MLflow logger).
"""
from __future__ import annotations

import argparse

from ..config import load_config
from .callbacks import KILL_AT_STEP_ENV, Callback
from .checkpoint import TrainingError, checkpoint_step, latest_checkpoint
from .data import apply_dropout
from .loop import TrainResult, train
from .resume import digest_inputs, prepare_output, reset_stale_output

__all__ = ["KILL_AT_STEP_ENV", "Callback", "TrainResult", "TrainingError", "apply_dropout", "checkpoint_step",
           "digest_inputs", "latest_checkpoint", "prepare_output", "reset_stale_output", "train"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML training config (see mosaic/config.py)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=10 (repeatable; values parsed as YAML)")


def run(args: argparse.Namespace) -> int:
    result = train(load_config(args.config, args.overrides))
    return 0 if result.status == "finished" else 143
