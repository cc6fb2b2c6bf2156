"""The built parts a run carries (model, codec, text encoder, extension, device, dtype), built the same way
for training and sampling.

Why it exists: a LoRA or base weights trained by `mosaic train` load only into the model the
trainer built, so the trainer and the sampler both build it here from the resolved config; and the
model step (mosaic.flow), the sampler, the mechanism evaluation, the calibration and the trainer's
finish all need the same six objects, so they take them as one `Components`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .infra.artefacts import check_artefact
from .config import Config
from .model import LoraSpec, build_codec, build_model, build_text_encoder, get_flavour


@dataclass
class Components:
    """A run's built parts: the MosaicTransformer, its codec and text encoder, the extension (a controlled
    baseline's modules; None for MOSAIC), the device and the dtype the model computes in."""

    model: Any
    codec: Any
    text_encoder: Any
    device: torch.device
    dtype: torch.dtype = torch.float32
    ext: Any = None


def build_components(cfg: Config, device: torch.device, dtype: torch.dtype = torch.float32) -> Components:
    """The config's flavour built on `device` (model with fp32 master weights; `dtype` is what it computes in);
    no extension yet (the trainer sets one up, the sampler loads a run's: mosaic.extension)."""
    mc = cfg.model
    if mc.weights is not None:
        check_artefact(mc.weights)  # a shipped base: refused if its bytes disagree with its provenance
    lora = None
    if cfg.train.mode == "lora":
        kw = {"targets": tuple(mc.lora_targets)} if mc.lora_targets is not None else {}
        lora = LoraSpec(rank=mc.lora_rank, alpha=mc.lora_alpha, dropout=mc.lora_dropout, init=mc.lora_init, **kw)
    torch.manual_seed(cfg.train.seed)  # the LoRA's initial A matrices come from the global RNG
    model = build_model(mc.flavour, weights=mc.weights, lora=lora, pos_scheme=mc.pos_scheme, max_refs=mc.max_refs,
                        gradient_checkpointing=mc.gradient_checkpointing, seed=cfg.train.seed, device=device,
                        ref_guidance=mc.ref_guidance)
    # only the weighted encoders live on a device
    text_kw = {"device": device} if get_flavour(mc.flavour).text["kind"] == "t5-clip" else {}
    codec = build_codec(mc.flavour, mc.weights)
    if getattr(codec, "vae", None) is not None:
        codec.vae.to(device)
    return Components(model, codec, build_text_encoder(mc.flavour, mc.weights, **text_kw), device, dtype)
