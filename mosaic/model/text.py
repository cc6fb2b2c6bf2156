"""Prompt encoders: `.encode(prompts) -> (text [B, L, D], pooled [B, Dp])`.

Paper profile (`t5-clip`): FLUX.1-dev's own encoders from a local diffusers folder, T5-XXL
(`text_encoder_2`, 512 tokens) for the sequence and CLIP-L (`text_encoder`) pooled output for
the modulation vector, encoded exactly as diffusers `FluxPipeline.encode_prompt` does.

Tiny profile (`hashed`): an honest small choice with no weights to download or train. Each
lower-cased word maps to a frozen random vector whose generator is seeded by a stable hash of the
word (so the same word always gets the same vector, across runs and machines); a fixed sinusoidal
code of the word's position is added so word order is visible (FLUX gives text tokens no RoPE
position). The sequence is truncated/zero-padded to `max_length`; pooled is the mean of a second
set of hashed word vectors. An empty prompt (text dropout) encodes to zeros. The tiny base
transformer learns its `context_embedder` on top of these fixed features.
"""
from __future__ import annotations

import math
import os
import re
import zlib

import torch

from .flavours import Flavour, get_flavour


class HashedWordEncoder:
    def __init__(self, max_length: int, dim: int, pooled_dim: int, seed: int = 0):
        self.max_length, self.dim, self.pooled_dim, self.seed = max_length, dim, pooled_dim, seed
        self._cache: dict[tuple[str, int], torch.Tensor] = {}
        pos = torch.arange(max_length)[:, None].float()
        freq = torch.exp(-math.log(1e4) * torch.arange(0, dim, 2).float() / dim)
        self.position_code = torch.zeros(max_length, dim)
        self.position_code[:, 0::2] = torch.sin(pos * freq)
        self.position_code[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]

    @staticmethod
    def words(prompt: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", prompt.lower())

    def _vector(self, word: str, dim: int, salt: int) -> torch.Tensor:
        key = (word, salt)
        if key not in self._cache:
            g = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{salt}:{word}".encode()))
            self._cache[key] = torch.randn(dim, generator=g)
        return self._cache[key]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        text = torch.zeros(len(prompts), self.max_length, self.dim)
        pooled = torch.zeros(len(prompts), self.pooled_dim)
        for b, prompt in enumerate(prompts):
            words = self.words(prompt)[: self.max_length]
            for i, w in enumerate(words):
                text[b, i] = self._vector(w, self.dim, 0) + self.position_code[i]
            if words:
                pooled[b] = torch.stack([self._vector(w, self.pooled_dim, 1) for w in words]).mean(0)
        return text, pooled


class T5ClipEncoder:
    """FLUX.1-dev text encoders (T5-XXL sequence + CLIP-L pooled) from local weights only."""

    def __init__(self, weights: str | os.PathLike, max_length: int = 512, dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu"):
        from diffusers import FluxPipeline
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        from .weights import locate

        parts = {}
        for sub, cls in (("text_encoder", CLIPTextModel), ("tokenizer", CLIPTokenizer),
                         ("text_encoder_2", T5EncoderModel), ("tokenizer_2", T5TokenizerFast)):
            root, found = locate(weights, sub)
            if found is None:
                raise FileNotFoundError(f"text encoder weights not found: {root / sub}")
            kw = {"torch_dtype": dtype} if sub.startswith("text_encoder") else {}
            parts[sub] = cls.from_pretrained(root, subfolder=sub, local_files_only=True, **kw)
            if sub.startswith("text_encoder"):
                parts[sub] = parts[sub].to(device).eval().requires_grad_(False)
        self.pipe = FluxPipeline(scheduler=None, vae=None, transformer=None, **parts)
        self.max_length = max_length
        self.dim = parts["text_encoder_2"].config.d_model
        self.pooled_dim = parts["text_encoder"].config.hidden_size

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        text, pooled, _ = self.pipe.encode_prompt(list(prompts), prompt_2=None, max_sequence_length=self.max_length)
        return text, pooled


def build_text_encoder(flavour: str | Flavour, weights: str | os.PathLike | None = None, **kwargs):
    """The flavour's prompt encoder (`t5-clip` needs `weights`, a local diffusers FLUX folder)."""
    fl = get_flavour(flavour)
    cfg = dict(fl.text)
    kind = cfg.pop("kind")
    if kind == "hashed":
        return HashedWordEncoder(**cfg, **kwargs)
    if kind == "t5-clip":
        if weights is None:
            raise FileNotFoundError(f"flavour {fl.name!r} needs T5 and CLIP weights: pass a local diffusers FLUX "
                                    "folder (with text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/)")
        return T5ClipEncoder(weights, max_length=cfg["max_length"], **kwargs)
    raise ValueError(f"unknown text encoder kind {kind!r}")
