"""One model step of FLUX flow matching, shared by the trainer, the sampler and the mechanism evaluation.

Why it exists: training, sampling and the held-out attention measurement must encode, noise,
condition and call the model the same way; each of them calls these functions and none of them
imports another. Conventions (FLUX's): x_t = (1 - t) x0 + t noise with t in (0, 1); the model
returns the velocity noise - x0 (or, for an x0-predicting flavour, the clean tokens, converted here),
which the training loss regresses and the Euler sampler follows.
Every random draw comes from an explicit generator, so a step is a pure function of its seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .config import Config

if TYPE_CHECKING:
    from .components import Components

X0_MIN_T = 0.05  # x0-prediction: the smallest t its velocity divides by


@dataclass
class Encoded:
    """A batch at token level, on the model's device and dtype."""

    x0: torch.Tensor  # [B, Nt, C]
    refs: torch.Tensor | None  # [B, K, Nr, C]
    ref_mask: torch.Tensor | None  # [B, K]
    text: torch.Tensor
    pooled: torch.Tensor
    target_grid: tuple[int, int]
    ref_grid: tuple[int, int] | None


def step_generator(seed: int, *stream: int) -> torch.Generator:
    """A CPU generator determined by (seed, *stream) alone, e.g. (seed, rank, step)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0]))


@torch.no_grad()
def encode_batch(parts: Components, batch: dict[str, Any], prompts: list[str], with_refs: bool,
                 generator: torch.Generator | None = None) -> Encoded:
    """Target (and, with_refs, references) through the run's codec, prompts through its text encoder, onto its
    device and dtype.

    With a `generator` the target is a posterior draw (upstream's training: `latent_dist.sample()`), the references
    the posterior mode; samples flagged in batch["ref_zero"] (image dropout, upstream's way) get zero reference
    latents, kept as tokens."""
    codec, device, dtype = parts.codec, parts.device, parts.dtype
    target = batch["target"].to(device)
    x0 = codec.encode(target, generator).to(dtype)
    refs = ref_mask = ref_grid = None
    if with_refs:
        b, k = batch["ref_mask"].shape
        r = batch["refs"].to(device)
        refs = codec.encode(r.flatten(0, 1)).unflatten(0, (b, k)).to(dtype)
        if "ref_zero" in batch:
            refs = refs.masked_fill(batch["ref_zero"].to(device)[:, None, None, None], 0)
        ref_mask, ref_grid = batch["ref_mask"].to(device), codec.grid(*r.shape[-2:])
    text, pooled = parts.text_encoder.encode(prompts)
    return Encoded(x0, refs, ref_mask, text.to(device, dtype), pooled.to(device, dtype),
                   codec.grid(*target.shape[-2:]), ref_grid)


def sample_timesteps(n: int, n_tokens: int, cfg: Config, g: torch.Generator) -> torch.Tensor:
    """t in (0, 1): sigmoid(N(mean, std)) (SD3/FLUX logit-normal), then FLUX's resolution shift.

    The shift is the one FLUX sampling uses: mu grows linearly with the image token count
    (diffusers `calculate_shift`) and t' = e^mu / (e^mu + 1/t - 1).
    """
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from diffusers.training_utils import compute_density_for_timestep_sampling

    t = compute_density_for_timestep_sampling("logit_normal", n, cfg.train.logit_mean, cfg.train.logit_std,
                                              generator=g)
    if cfg.train.resolution_shift:
        mu = calculate_shift(n_tokens)
        t = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    return t


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise; t a float or one value per sample [B]."""
    if isinstance(t, torch.Tensor):
        t = t[:, None, None]
    return (1 - t) * x0 + t * noise


def guidance_for(model, n: int, value: float, device, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """The guidance-embedding input ([n] filled with `value`), or None for a flavour without one."""
    if not model.transformer.config.guidance_embeds:
        return None
    return torch.full((n,), value, device=device, dtype=dtype)


def combine_hooks(*hooks):
    """One attn_hook calling each of `hooks` that is not None (None when there is none)."""
    hooks = [h for h in hooks if h is not None]
    if len(hooks) < 2:
        return hooks[0] if hooks else None
    return lambda i, q, k, layout: [h(i, q, k, layout) for h in hooks]


def to_velocity(output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
    """The velocity noise - x0 that a network `output` stands for at (x_t, t).

    "velocity": the output itself. "x0": the output is the clean x0_hat, and since
    x_t = (1 - t) x0 + t noise, noise - x0 = (x_t - x0) / t; t is clamped at X0_MIN_T, where the
    division would amplify the network's error without bound."""
    if prediction == "velocity":
        return output
    if prediction == "x0":
        return (xt - output) / t.clamp_min(X0_MIN_T)[:, None, None].to(xt)
    raise ValueError(f"prediction {prediction!r}: expected 'velocity' or 'x0'")


def velocity(model, enc: Encoded, xt: torch.Tensor, t: torch.Tensor, guidance: torch.Tensor | None,
             attn_hook=None, extra: dict[str, Any] | None = None) -> torch.Tensor:
    """The model's velocity (noise - x0) at (x_t, t) [B] given the encoded references and prompt, whatever
    its flavour predicts (`to_velocity`).

    `model` is the MosaicTransformer or the DeepSpeed engine wrapping it; `extra` holds the
    extension's forward inputs (mosaic.extension)."""
    out = model(target=xt, refs=enc.refs, ref_mask=enc.ref_mask, text=enc.text, pooled=enc.pooled, timestep=t,
                guidance=guidance, target_grid=enc.target_grid, ref_grid=enc.ref_grid, attn_hook=attn_hook,
                **(extra or {}))
    return to_velocity(out, xt, t, getattr(model, "module", model).flavour.prediction)
