"""The training loss of one batch: flow-matching MSE, plus SCAL and MDL, plus an extension's losses.

Why it exists: L = L_diff + alpha L_SCA + beta(step) L_MD is the method; this is where it is
added up (the losses themselves: mosaic.losses; the model step: mosaic.flow).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..config import Config
from ..flow import Encoded, add_noise, combine_hooks, guidance_for, sample_timesteps, velocity
from ..losses import AttentionProbe, correspondence_losses


def noised(enc: Encoded, cfg: Config, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, target velocity noise - x0) for one batch, from generator `g`."""
    t = sample_timesteps(enc.x0.shape[0], enc.x0.shape[1], cfg, g)
    noise = torch.randn(enc.x0.shape, generator=g).to(enc.x0)
    t = t.to(enc.x0)
    return add_noise(enc.x0, noise, t), t, noise - enc.x0


def forward_losses(engine, enc: Encoded, batch: dict[str, Any], prompts: list[str], cfg: Config, step: int,
                   g: torch.Generator, ext=None) -> dict[str, torch.Tensor]:
    """{"total", "diff"}, plus {"scal", "mdl", "beta"} when SCAL or MDL is on, plus the extension's losses."""
    xt, t, target = noised(enc, cfg, g)
    probe = None
    if enc.refs is not None and (cfg.loss.alpha > 0 or cfg.loss.beta_at(step) > 0):
        probe = AttentionProbe(cfg.loss, batch)
    extra = ext.forward_kwargs(engine.module, batch, prompts, enc) if ext else {}
    hook = combine_hooks(probe, ext.attn_hook(batch) if ext else None)
    pred = velocity(engine, enc, xt, t, guidance_for(engine.module, len(t), cfg.train.guidance, xt.device), hook, extra)
    out = {"diff": F.mse_loss(pred.float(), target.float())}
    total = out["diff"]
    if probe is not None:
        corr = correspondence_losses(probe, batch, step)
        out.update(scal=corr["scal"], mdl=corr["mdl"], beta=torch.tensor(corr["beta"]))
        total = total + corr["loss"]
    for name, value in (ext.losses(engine.module, batch, step) if ext else {}).items():
        if name in out or name == "total":
            raise ValueError(f"model.extension {cfg.model.extension}: its loss {name!r} clashes with a trainer loss")
        out[name] = value
        total = total + value
    out["total"] = total
    return out
