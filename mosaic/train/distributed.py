"""The process group and the DeepSpeed engine: one CPU process (gloo, fp32) or many GPUs (NCCL, bf16).

Why it exists: the loop must not care how many processes it runs in; this module starts the
process group (a world of one when no launcher started the process) and wraps the model, its
optimizer and LR schedule in a DeepSpeed ZeRO engine (stages 0-3; under 3 the weights themselves are
partitioned, see mosaic.train.partitioned).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from diffusers.training_utils import EMAModel

from ..config import Config
from .partitioned import local_tensors


class ConstantEMA(EMAModel):
    """Upstream MOSAIC's EMA (train.py): ema <- ema + (1 - decay) (p - ema) at every step, from the initial
    weights, no warm-up (diffusers' EMAModel ramps the decay as (1 + n) / (10 + n))."""

    def get_decay(self, optimization_step: int) -> float:
        return self.decay


def setup_distributed() -> tuple[torch.device, int, int]:
    """(device, rank, world size). A process not started by a launcher becomes a world of one."""
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        # Single process (no launcher: torchrun and the deepspeed launcher set MASTER_ADDR): no rendezvous
        # port needed. RANK alone may be left over from an earlier in-process run and inherited.
        if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
            for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
                os.environ.setdefault(k, v)
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            deepspeed.init_distributed(dist_backend=backend)
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    return torch.device(f"cuda:{local}" if cuda else "cpu"), dist.get_rank(), dist.get_world_size()


def deepspeed_config(cfg: Config, bf16: bool) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.train.grad_clip,
        # stage 3: every parameter partitioned, whatever its size (DeepSpeed keeps those under 1e5 elements
        # whole by default), so the export and EMA take the same path at every scale, the debug flavour's too
        "zero_optimization": {"stage": cfg.train.zero_stage,
                              **({"stage3_param_persistence_threshold": 0} if cfg.train.zero_stage == 3 else {})},
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def build_engine(model, cfg: Config, bf16: bool):
    """(engine, LR scheduler, EMA or None, trainable parameters): AdamW with linear warmup, under DeepSpeed.
    Under ZeRO-3 the EMA averages this rank's slices (step it with `local_tensors(params)`)."""
    import deepspeed

    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    warmup = cfg.train.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=deepspeed_config(cfg, bf16))
    ema = None
    if cfg.train.ema_decay > 0:
        cls = ConstantEMA if cfg.train.ema_rule == "upstream" else EMAModel
        ema = cls(local_tensors(params), decay=cfg.train.ema_decay)  # ZeRO-3: this rank's slices
    return engine, scheduler, ema, params

