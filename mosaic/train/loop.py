"""The training loop, top to bottom: build, resume, step until done, export, evaluate.

Why it exists: this is the one place that orders a run; what each part does lives beside it
(data, objective, checkpoint, distributed, callbacks, run_logger) and in mosaic.flow.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..inference import mechanism
from ..components import build_components
from ..config import Config
from ..data.dataset import load_dataset
from ..extension import build_extension
from ..flow import encode_batch, step_generator
from ..model.weights import locate
from ..infra.runfolder import CHECKPOINTS
from .calibrate import calibrated
from .callbacks import Callback, StopFlag, fault_callbacks
from .checkpoint import Checkpointer, TrainingError, latest_checkpoint
from .data import apply_dropout, batch_stream, check_mdl_active, data_stages
from .distributed import build_engine, setup_distributed
from .partitioned import local_tensors
from .objective import forward_losses
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
    out, lora_mode = Path(cfg.train.output_dir), cfg.train.mode == "lora"
    if cfg.model.weights is not None:
        locate(cfg.model.weights, "transformer")  # a missing path fails here, naming it, before any setup
    device, rank, world = setup_distributed()
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    dtype = torch.bfloat16 if bf16 else torch.float32
    model, codec, text_encoder = build_components(cfg, device)
    ext = build_extension(cfg)
    if ext is not None:
        ext.setup(model)  # may attach trainable modules: before the optimizer sees the parameters
    stages = data_stages(cfg, codec, model.max_refs, rank, world)
    check_mdl_active(cfg, [batches.dataset for _, batches in stages])
    val = None  # read now, so a bad val split fails before training rather than after
    if lora_mode and cfg.data.val and cfg.eval.enabled:
        val = load_dataset(cfg.data.val, cfg, codec, model.max_refs)
    if rank == 0:
        prepare_output(out, cfg)
    dist.barrier()
    cfg, calibration = calibrated(cfg, out, model, stages, codec, text_encoder, device, dtype, ext)
    engine, scheduler, ema, params = build_engine(model, cfg, bf16)
    ckpt = Checkpointer(engine, ema, params, out, cfg.train.keep_checkpoints, rank, lora_mode)
    step = saved_at = ckpt.load()
    logger = (start_logger(cfg, out, step, world, device, bf16, calibration) if rank == 0 and cfg.tracking.enabled
              else None)
    hooks = [*fault_callbacks(cfg, stop_after), *callbacks]
    status, data = "finished", batch_stream(stages, step, cfg.train.steps)
    bar = tqdm(total=cfg.train.steps, initial=step, disable=rank != 0, desc=cfg.variant, dynamic_ncols=True,
               mininterval=1.0)
    try:
        with StopFlag() as sigterm:
            engine.train()
            while step < cfg.train.steps:
                started = time.perf_counter()
                g = step_generator(cfg.train.seed, rank, step)
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)))  # in-model randomness (LoRA dropout)
                batch, prompts = apply_dropout(next(data), cfg, g)
                enc = encode_batch(batch, prompts, codec, text_encoder, device, dtype, with_refs=lora_mode,
                                   generator=g if cfg.model.vae_posterior == "upstream" else None)
                losses = forward_losses(engine, enc, batch, prompts, cfg, step, g, ext)
                for h in hooks:
                    h.on_loss(step + 1, losses)
                stopping = agree_to_continue(losses, sigterm.set, step + 1, device, out)
                lr = scheduler.get_last_lr()[0]
                engine.backward(losses["total"])
                if ema is not None and cfg.train.ema_rule == "upstream":  # upstream averages before the update
                    ema.step(local_tensors(params))
                engine.step()
                if ema is not None and cfg.train.ema_rule == "diffusers":
                    ema.step(local_tensors(params))
                step += 1
                if logger:
                    log_step(logger, losses, lr, started, step, cfg.tracking.log_every)
                bar.update(1)
                bar.set_postfix(loss=f"{losses['total'].item():.4f}", diff=f"{losses['diff'].item():.4f}")
                if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                    ckpt.save(step)
                    saved_at = step
                    if logger:
                        logger.flush()
                stopping = any([h.on_step_end(step) for h in hooks]) or stopping
                if step < cfg.train.steps and stopping:
                    status = "interrupted"
                    break
        if saved_at != step:
            ckpt.save(step)
            if logger:
                logger.flush()
        if status == "interrupted":
            if logger:
                logger.end("KILLED")
            return TrainResult(status, step, None, logger.run_id if logger else None)
        paths, results = ckpt.export(ext), {}  # every rank: ZeRO-3 gathers the weights collectively
        if rank == 0:
            results = finish(paths, logger, lora_mode, val, engine.module, codec, text_encoder, cfg, device, dtype,
                             step, ckpt.out, ext)
        elif val is not None and ckpt.partitioned:  # ZeRO-3's forward gathers the weights: every rank runs it
            mechanism.evaluate(engine.module, codec, text_encoder, val, cfg, device, dtype, ext)
        dist.barrier()
        return TrainResult(status, step, paths[0] if paths else None, logger.run_id if logger else None, results)
    except BaseException:
        if logger:
            with contextlib.suppress(Exception):  # a logging failure must not hide the training error
                logger.end("FAILED")
        raise
    finally:
        bar.close()


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


def finish(paths: list[Path], logger, lora_mode: bool, val, model, codec, text_encoder, cfg: Config, device, dtype,
           step: int, out: Path, ext) -> dict[str, float]:
    """Rank 0 after the export: log the weights, evaluate on the val split, close the run."""
    output, *extra = paths
    if logger:
        logger.set_tag("output", str(output.resolve()))
        for path in ([output] if lora_mode else []) + extra:
            logger.log_artifact(path)
    results = {}
    if val is not None:
        results = mechanism.evaluate_run(model, codec, text_encoder, val, cfg, device, dtype, out, logger, ext)
    if logger:
        truncated = getattr(text_encoder, "truncated", None)  # prompts longer than the text encoder keeps
        if truncated is not None:
            logger.log_metrics({"data/prompts_truncated": float(truncated)}, step)
        logger.end("FINISHED")
    return results
