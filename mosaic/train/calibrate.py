"""Loss weights calibrated to the model's own loss scale (`loss.calibrate`, issue 22 decision 4).

Why it exists: the paper's alpha = 0.4 and beta = 0.6 are set for FLUX.1-dev's diffusion loss. On a
model whose diffusion loss is on another scale (the tiny profile's, about 20 times smaller than its
SCAL term), the same numbers give the attention losses another weight against the diffusion loss,
and so another method. Rule `grad-norm`: before the first step, on `calibrate_batches` batches of the
training data (no dropout), measure the norm of each term's gradient over the trainable parameters,
alone: G_diff, G_SCA and G_MD (means over the batches, and over ranks). Then

    alpha := alpha * G_diff / G_SCA,    beta := beta * G_diff / G_MD,

so the configured weights become the ratio of each attention loss's gradient to the diffusion loss's
at the start of training, whatever the loss scale. The measured norms and the weights used are written
to the run folder (`calibration.json`, read again on resume, so a resumed run keeps its weights) and
into the run's MLflow params (`calibration/...`). Measured on the model before DeepSpeed wraps it, so
every ZeRO stage calibrates alike.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.distributed as dist

from ..components import Components
from ..config import Config
from ..flow import encode_batch, step_generator
from ..infra.runfolder import atomic_write
from .checkpoint import latest_checkpoint
from .data import batch_stream
from .objective import forward_losses

CALIBRATION_FILE = "calibration.json"
RULES = ("none", "grad-norm")


class Unwrapped(torch.nn.Module):
    """The model as `forward_losses` calls a DeepSpeed engine (`engine(...)`, `engine.module`), before the
    engine exists: its gradient hooks would take torch.autograd.grad's gradients for a training step's."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def gradient_norms(parts: Components, cfg: Config, batches) -> dict[str, float]:
    """Mean gradient norm over the trainable parameters of the diffusion, SCAL and MDL terms, each alone
    (`parts.model`: the trainer's model before DeepSpeed wraps it)."""
    model = parts.model
    unit = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, alpha=1.0, beta=1.0, beta_warmup=None))
    engine = Unwrapped(model)
    params = [p for p in model.parameters() if p.requires_grad]
    sums, n = torch.zeros(3, dtype=torch.float64, device=parts.device), 0
    for i, batch in enumerate(batches):
        prompts = list(batch["prompt"])
        enc = encode_batch(parts, batch, prompts, with_refs=True)
        losses = forward_losses(engine, enc, batch, prompts, unit, 0, step_generator(cfg.train.seed, 0, i), parts.ext)
        if "scal" not in losses:
            raise ValueError("loss.calibrate: the batches carry no references, so SCAL and MDL have no gradient")
        for j, name in enumerate(("diff", "scal", "mdl")):
            grads = torch.autograd.grad(losses[name], params, retain_graph=j < 2, allow_unused=True)
            sums[j] += torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))
        n += 1
    if dist.is_initialized():
        dist.all_reduce(sums)
        n *= dist.get_world_size()
    g_diff, g_scal, g_mdl = (sums / max(n, 1)).tolist()
    return {"g_diff": g_diff, "g_scal": g_scal, "g_mdl": g_mdl, "batches": n}


def calibrated(cfg: Config, out: Path, parts: Components, stages) -> tuple[Config, dict]:
    """(`cfg` with the weights of its `loss.calibrate` rule, the calibration record); for "none", (cfg, {}).
    Measured on `parts.model` before DeepSpeed wraps it; read back from the run folder when the run will resume
    from a checkpoint, so a resumed run keeps the weights it started with."""
    rule = cfg.loss.calibrate
    if rule == "none":
        return cfg, {}
    path = out / CALIBRATION_FILE
    if latest_checkpoint(out) is not None:
        if not path.exists():
            raise FileNotFoundError(f"{path}: a run resuming from a checkpoint with loss.calibrate = {rule!r} has "
                                    f"no record of its calibrated weights; delete {out} to start it afresh")
        record = json.loads(path.read_text())
    else:
        m = gradient_norms(parts, cfg, batch_stream(stages, 0, cfg.loss.calibrate_batches))
        weights = {}
        for name, ratio, key in (("alpha", cfg.loss.alpha, "g_scal"), ("beta", cfg.loss.beta, "g_mdl")):
            if ratio > 0 and not m[key] > 0:
                raise ValueError(f"loss.calibrate: the {key[2:].upper()} gradient is {m[key]} on the first "
                                 f"{m['batches']} batches; no weight can be calibrated against it")
            weights[name] = ratio * m["g_diff"] / m[key] if ratio > 0 else 0.0
        record = {"rule": rule, "ratio_alpha": cfg.loss.alpha, "ratio_beta": cfg.loss.beta, **m, **weights}
        if not dist.is_initialized() or dist.get_rank() == 0:
            atomic_write(path, json.dumps(record, indent=2))
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, alpha=record["alpha"], beta=record["beta"])), record
