"""Named model flavours: one place that says which backbone, codec and text encoder a profile uses.

`flux-dev` is the real FLUX.1-dev transformer config (weights come from a local diffusers folder
or the local Hugging Face cache). `tiny` and `debug` are small random FLUX transformers of the same
architecture for CPU work: `tiny` trains in about a minute per variant on 2 cores at the tiny
profile sizes, `debug` is the smallest that still exercises every code path (tests).

`flux-dev-random` is for GPU benches only (bench/gpu_checks.py): FLUX.1-dev's transformer at full
size with random weights, a random VAE of FLUX's architecture and hashed prompt features of T5's
shape (512 x 4096, pooled 768), so the real trainer and sampler run at FLUX.1-dev scale with no
weights at all. Its numbers are speed and memory, never image quality.

Tiny/debug token channels: the pixel codec pixel-unshuffles by 4 (3*4*4 = 48 channels) and packs
2x2 like FLUX latents, so in_channels = 48*4 = 192 (one token per 8 px). `tiny4` unshuffles by 2:
in_channels = 12*4 = 48, one token per 4 px.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..infra.registry import Registry


PREDICTIONS = ("velocity", "x0")
# FLUX.1-dev transformer/config.json (FluxTransformer2DModel constructor kwargs)
FLUX_DEV_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                            guidance_embeds=True, axes_dims_rope=(16, 56, 56))


@dataclass(frozen=True)
class Flavour:
    name: str
    transformer: dict[str, Any]  # FluxTransformer2DModel constructor kwargs
    codec: dict[str, Any]  # {"kind": "vae" | "pixel", "downsample": int, "patch": int}
    text: dict[str, Any]  # {"kind": "t5-clip" | "hashed", "max_length": int, ...}
    max_refs: int = 4
    # what the network outputs: "velocity" (noise - x0, as FLUX.1-dev was trained) or "x0" (the clean
    # tokens, converted to a velocity in mosaic.flow), for tokens wider than the model (Li & He 2025, JiT)
    prediction: str = "velocity"
    notes: str = field(default="", compare=False)

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"flavour {self.name!r}: prediction {self.prediction!r} is not one of {PREDICTIONS}")


FLAVOURS: Registry[Flavour] = Registry("model flavour", {
    "flux-dev": Flavour(
        name="flux-dev",
        transformer=FLUX_DEV_TRANSFORMER,
        codec=dict(kind="vae", downsample=8, patch=2),
        text=dict(kind="t5-clip", max_length=512),
        max_refs=6,
        notes="FLUX.1-dev; weights from a local diffusers folder (subfolders transformer/, vae/, text_encoder*/)",
    ),
    "flux-dev-random": Flavour(
        name="flux-dev-random",
        transformer=FLUX_DEV_TRANSFORMER,
        codec=dict(kind="vae", downsample=8, patch=2, random=True),  # weights=None: a random FLUX-architecture VAE
        text=dict(kind="hashed", max_length=512, dim=4096, pooled_dim=768),
        max_refs=6,
        notes="benches only: FLUX.1-dev's shapes, random weights, no text encoder",
    ),
    "tiny": Flavour(
        name="tiny",
        transformer=dict(patch_size=1, in_channels=192, num_layers=3, num_single_layers=2, attention_head_dim=32,
                         num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=64,
                         guidance_embeds=True, axes_dims_rope=(8, 12, 12)),
        codec=dict(kind="pixel", downsample=4, patch=2),
        text=dict(kind="hashed", max_length=32, dim=64, pooled_dim=64),  # K = 6 prompts: <= 30 words
        max_refs=4,
        prediction="x0",  # 192-dim pixel tokens through a 128-wide model (docs/tiny_base_design.md)
    ),
    "tiny4": Flavour(
        name="tiny4",
        transformer=dict(patch_size=1, in_channels=48, num_layers=3, num_single_layers=2, attention_head_dim=32,
                         num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=64,
                         guidance_embeds=True, axes_dims_rope=(8, 12, 12)),
        codec=dict(kind="pixel", downsample=2, patch=2),
        # K = 6 places prompts: <= 42 words; each word also carries its phrase, as T5's contextual embeddings
        # bind "cross" to "top left" (docs/tiny_base_design.md; a tiny-only switch, docs/fidelity.md)
        text=dict(kind="hashed", max_length=48, dim=64, pooled_dim=64, context="phrase"),
        max_refs=6,
        prediction="x0",
        notes="the places world (issue 22): 4-px tokens (48 channels), so a 72-px target is 18 x 18 tokens and "
              "a subject about 5 tokens across",
    ),
    "debug": Flavour(
        name="debug",
        transformer=dict(patch_size=1, in_channels=192, num_layers=2, num_single_layers=1, attention_head_dim=16,
                         num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
                         guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
        codec=dict(kind="pixel", downsample=4, patch=2),
        text=dict(kind="hashed", max_length=8, dim=16, pooled_dim=16),
        max_refs=3,
    ),
})


def get_flavour(flavour: str | Flavour) -> Flavour:
    """A flavour by name (or the flavour itself); ValueError naming the unknown name."""
    return flavour if isinstance(flavour, Flavour) else FLAVOURS.get(flavour)
