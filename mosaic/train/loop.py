"""The training loop, top to bottom: build, resume, step until done (`Trainer.train_step`), export, evaluate.

Why it exists: this is the one place that orders a run; what each part does lives beside it
(data, objective, checkpoint, distributed, callbacks, run_logger) and in mosaic.flow.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..components import build_components
from ..config import Config
from ..data.dataset import load_dataset
from ..extension import build_extension
from ..flow import encode_batch, step_generator
from ..inference import mechanism
from ..infra.runfolder import CHECKPOINTS
from ..model.weights import locate
from .calibrate import calibrated
from .callbacks import Callback, StopFlag, fault_callbacks
from .checkpoint import Checkpointer, TrainingError, latest_checkpoint
from .data import apply_dropout, batch_stream, check_mdl_active, data_stages
from .distributed import build_engine, setup_distributed
from .objective import forward_losses
from .partitioned import local_tensors
from .resume import prepare_output
from .run_logger import log_step, start_logger


@dataclass
class TrainResult:
    status: str  # "finished" or "interrupted" (stopped early, checkpoint saved)
    step: int
    output: Path | None  # the exported LoRA file or base transformer folder (finished runs)
    run_id: str | None = None
    mechanism: dict[str, float] = field(default_factory=dict)


def train(cfg: Config, stop_after: int | None = None, callbacks: list[Callback] = ()) -> TrainResult:
    """Train (or resume) the run in `cfg.train.output_dir`. `stop_after=n` stops after step n with a
    checkpoint, as a pre-emption would (tests); the same call again resumes from there."""
    trainer = Trainer(cfg, stop_after, callbacks)
    try:
        return trainer.finish(trainer.loop())
    except BaseException:
        if trainer.logger:
            with contextlib.suppress(Exception):  # a logging failure must not hide the training error
                trainer.logger.end("FAILED")
        raise
    finally:
        trainer.bar.close()


class Trainer:
    """One run: built (model, data, engine, checkpoint, logger) by the constructor, stepped by `train_step`,
    exported and evaluated by `finish`, as torchtitan's trainer."""

    def __init__(self, cfg: Config, stop_after: int | None = None, callbacks: list[Callback] = ()):
        self.out, self.lora_mode = Path(cfg.train.output_dir), cfg.train.mode == "lora"
        if cfg.model.weights is not None:
            locate(cfg.model.weights, "transformer")  # a missing path fails here, naming it, before any setup
        device, self.rank, world = setup_distributed()
        bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
        parts = self.parts = build_components(cfg, device, torch.bfloat16 if bf16 else torch.float32)
        parts.ext = build_extension(cfg)
        if parts.ext is not None:
            parts.ext.setup(parts.model)  # may attach trainable modules: before the optimizer sees the parameters
        self.stages = data_stages(cfg, parts.codec, parts.model.max_refs, self.rank, world)
        check_mdl_active(cfg, [batches.dataset for _, batches in self.stages])
        self.val = None  # read now, so a bad val split fails before training rather than after
        if self.lora_mode and cfg.data.val and cfg.eval.enabled:
            self.val = load_dataset(cfg.data.val, cfg, parts.codec, parts.model.max_refs)
        if self.rank == 0:
            prepare_output(self.out, cfg)
        dist.barrier()
        self.cfg, calibration = calibrated(cfg, self.out, parts, self.stages)
        self.engine, self.scheduler, self.ema, self.params = build_engine(parts.model, self.cfg, bf16)
        self.ckpt = Checkpointer(self.engine, self.ema, self.params, self.out, cfg.train.keep_checkpoints, self.rank,
                                 self.lora_mode)
        self.step = self.saved_at = self.ckpt.load()
        self.logger = (start_logger(self.cfg, self.out, self.step, world, device, bf16, calibration)
                       if self.rank == 0 and cfg.tracking.enabled else None)
        self.hooks = [*fault_callbacks(self.cfg, stop_after), *callbacks]
        self.bar = tqdm(total=cfg.train.steps, initial=self.step, disable=self.rank != 0, desc=cfg.variant,
                        dynamic_ncols=True, mininterval=1.0)

    def loop(self) -> str:
        """Step until `train.steps`: "finished", or "interrupted" when a hook or SIGTERM stops it early."""
        data, steps = batch_stream(self.stages, self.step, self.cfg.train.steps), self.cfg.train.steps
        with StopFlag() as sigterm:
            self.engine.train()
            while self.step < steps:
                if self.train_step(data, sigterm.set) and self.step < steps:
                    return "interrupted"
        return "finished"

    def train_step(self, data: Iterator[dict], sigterm: bool) -> bool:
        """One update on the next batch of `data` (every draw seeded by (seed, rank, step)), logged and
        checkpointed; returns whether to stop (a hook asks, or any rank got SIGTERM)."""
        cfg, engine, started = self.cfg, self.engine, time.perf_counter()
        g = step_generator(cfg.train.seed, self.rank, self.step)
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)))  # in-model randomness (LoRA dropout)
        batch, prompts = apply_dropout(next(data), cfg, g)
        enc = encode_batch(self.parts, batch, prompts, with_refs=self.lora_mode,
                           generator=g if cfg.model.vae_posterior == "upstream" else None)
        losses = forward_losses(engine, enc, batch, prompts, cfg, self.step, g, self.parts.ext)
        for h in self.hooks:
            h.on_loss(self.step + 1, losses)
        stopping = agree_to_continue(losses, sigterm, self.step + 1, self.parts.device, self.out)
        lr = self.scheduler.get_last_lr()[0]
        engine.backward(losses["total"])
        if self.ema is not None and cfg.train.ema_rule == "upstream":  # upstream averages before the update
            self.ema.step(local_tensors(self.params))
        engine.step()
        if self.ema is not None and cfg.train.ema_rule == "diffusers":
            self.ema.step(local_tensors(self.params))
        self.step += 1
        if self.logger:
            log_step(self.logger, losses, lr, started, self.step, cfg.tracking.log_every)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{losses['total'].item():.4f}", diff=f"{losses['diff'].item():.4f}")
        if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
            self.save()
        return any([h.on_step_end(self.step) for h in self.hooks]) or stopping

    def save(self) -> None:
        """A checkpoint of this step; the logger flushed with it."""
        self.ckpt.save(self.step)
        self.saved_at = self.step
        if self.logger:
            self.logger.flush()

    def finish(self, status: str) -> TrainResult:
        """Checkpoint the last step; a finished run is exported (every rank: ZeRO-3 gathers the weights
        collectively), evaluated on the val split and its MLflow run closed."""
        if self.saved_at != self.step:
            self.save()
        run_id = self.logger.run_id if self.logger else None
        if status == "interrupted":
            if self.logger:
                self.logger.end("KILLED")
            return TrainResult(status, self.step, None, run_id)
        paths, results = self.ckpt.export(self.parts.ext), {}
        if self.rank == 0:
            results = self.publish(paths)
        elif self.val is not None and self.ckpt.partitioned:  # ZeRO-3's forward gathers the weights: every rank
            mechanism.evaluate(self.parts, self.val, self.cfg)
        dist.barrier()
        return TrainResult(status, self.step, paths[0] if paths else None, run_id, results)

    def publish(self, paths: list[Path]) -> dict[str, float]:
        """Rank 0 after the export: log the weights, evaluate on the val split, close the run."""
        output, *extra = paths
        logger, results = self.logger, {}
        if logger:
            logger.set_tag("output", str(output.resolve()))
            for path in ([output] if self.lora_mode else []) + extra:
                logger.log_artifact(path)
        if self.val is not None:
            results = mechanism.evaluate_run(self.parts, self.val, self.cfg, self.ckpt.out, logger)
        if logger:
            truncated = getattr(self.parts.text_encoder, "truncated", None)  # prompts the text encoder cut
            if truncated is not None:
                logger.log_metrics({"data/prompts_truncated": float(truncated)}, self.step)
            logger.end("FINISHED")
        return results


def agree_to_continue(losses: dict[str, torch.Tensor], sigterm: bool, step: int, device, out: Path) -> bool:
    """One collective per step: raises if any rank's loss is not finite (before the update); returns
    whether any rank got SIGTERM."""
    flags = torch.tensor([float(not torch.isfinite(losses["total"])), float(sigterm)], device=device)
    dist.all_reduce(flags)
    bad, stopping = flags.tolist()
    if bad:
        vals = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        raise TrainingError(f"step {step}: non-finite loss ({vals}); stopped before the update; "
                            f"last good checkpoint: {latest_checkpoint(out) or 'none'} in {out / CHECKPOINTS}")
    return bool(stopping)
