"""Images <-> transformer tokens, behind one interface for both profiles.

Paper profile: the FLUX VAE (`AutoencoderKL`), latents normalised with the VAE's own
`(z - shift_factor) * scaling_factor`, then packed 2x2 (one token per 16 px for a downsample-8 VAE).
Tiny/debug profile: a parameter-free pixel codec, pixel-unshuffle by 4 (3 -> 48 channels) then the
same 2x2 packing (one token per 8 px, 192 channels). Packing follows diffusers `FluxPipeline._pack_latents`.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .flavours import Flavour, get_flavour
from .weights import component_config, load_error, locate


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, c, h, w] -> [B, (h/2)*(w/2), c*4], each token a 2x2 patch ordered (c, ph, pw)."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent grid {h}x{w} is not divisible by the 2x2 packing")
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of `pack`: [B, N, c*4] -> [B, c, h, w]."""
    b, n, cp = tokens.shape
    h, w = latent_hw
    if n != (h // 2) * (w // 2):
        raise ValueError(f"{n} tokens do not fill a {h}x{w} latent grid")
    x = tokens.view(b, h // 2, w // 2, cp // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, cp // 4, h, w)


class Codec:
    """Shared interface: encode/decode images in [-1, 1], token grid, downsample, patch, channels."""

    downsample: int
    patch: int = 2
    latent_channels: int

    @property
    def channels(self) -> int:
        return self.latent_channels * self.patch * self.patch

    def grid(self, height: int, width: int) -> tuple[int, int]:
        step = self.downsample * self.patch
        if height % step or width % step:
            raise ValueError(f"image size {height}x{width} is not a multiple of {step} px (one token per {step} px)")
        return height // step, width // step

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Tokens of `images`; with a `generator`, a VAE draws from its posterior (a deterministic codec ignores it)."""
        self.grid(*images.shape[-2:])
        return pack(self.to_latents(images, generator))

    def decode(self, tokens: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
        h, w = self.grid(*size_hw)
        return self.from_latents(unpack(tokens, (h * self.patch, w * self.patch)))

    def to_latents(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelCodec(Codec):
    """Lossless pixel-unshuffle codec for the tiny world (no weights)."""

    def __init__(self, downsample: int = 4):
        self.downsample, self.latent_channels = downsample, 3 * downsample * downsample

    def to_latents(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.downsample)  # deterministic: no posterior to draw from

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, self.downsample)


class VaeCodec(Codec):
    """FLUX VAE codec: AutoencoderKL latents normalised by the VAE config's shift and scale.

    `encode` uses the posterior mode (deterministic), or a posterior draw from `generator` when one is given
    (or from the global RNG when `sample=True` was set).
    """

    def __init__(self, vae, sample: bool = False):
        self.vae, self.sample = vae.eval().requires_grad_(False), sample
        cfg = vae.config
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.latent_channels = cfg.latent_channels
        self.shift = cfg.shift_factor or 0.0
        self.scale = cfg.scaling_factor

    @classmethod
    def from_pretrained(cls, weights: str | os.PathLike, dtype: torch.dtype = torch.float32) -> VaeCodec:
        from diffusers import AutoencoderKL

        root, sub = locate(weights, "vae")
        component_config(root, sub, "_class_name", ("AutoencoderKL",))
        try:
            return cls(AutoencoderKL.from_pretrained(root, subfolder=sub, torch_dtype=dtype, local_files_only=True))
        except (OSError, ValueError, RuntimeError) as e:
            raise load_error(root / (sub or ""), "AutoencoderKL", e) from None

    @torch.no_grad()
    def to_latents(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        z = dist.sample(generator) if generator is not None or self.sample else dist.mode()
        return (z - self.shift) * self.scale

    @torch.no_grad()
    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode((latents / self.scale + self.shift).to(self.vae.dtype)).sample


# FLUX.1-dev vae/config.json (the architecture of a random VAE; its latent shift and scale)
FLUX_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)


def random_vae_codec(seed: int = 0) -> VaeCodec:
    """A VAE codec of FLUX's architecture with seeded random weights (benches: flavour `flux-dev-random`)."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VaeCodec(AutoencoderKL(**FLUX_VAE))


def build_codec(flavour: str | Flavour, weights: str | os.PathLike | None = None) -> Codec:
    """The flavour's codec; the VAE codec needs `weights` (a local diffusers FLUX folder), unless the flavour
    asks for a random one (`random`: benches only)."""
    cfg = get_flavour(flavour).codec
    if cfg["kind"] == "pixel":
        return PixelCodec(cfg["downsample"])
    if cfg["kind"] == "vae":
        if weights is None and cfg.get("random"):
            return random_vae_codec()
        if weights is None:
            raise FileNotFoundError(f"flavour {get_flavour(flavour).name!r} needs VAE weights: pass a local diffusers "
                                    "FLUX folder (with a vae/ subfolder)")
        return VaeCodec.from_pretrained(weights)
    raise ValueError(f"unknown codec kind {cfg['kind']!r}")
