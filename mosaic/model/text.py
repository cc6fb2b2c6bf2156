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

With `context="phrase"` each word's vector also carries its phrase: the sum of a third set of hashed
vectors over the words between the prompt's phrase breaks (`and`, commas), over the square root of their
count (so a word's norm). T5 hands FLUX contextual embeddings, so "cross" in "a cross at the top left
and a disk at ..." already knows its place; bare word vectors leave that binding to the tiny transformer,
which (issue 22) draws each place a blend of the prompted kinds instead.

A prompt longer than the encoder's limit is truncated, as FLUX itself truncates T5 at 512 tokens
(and CLIP at 77): the words past the limit are not seen. Nothing is dropped silently: each
encoder counts the prompts it truncated in `.truncated`, logs a warning on the first, and
`overflow(prompt)` says whether and how a prompt would be cut (`mosaic data validate --flavour`
uses it to list every such prompt of a dataset).
"""
from __future__ import annotations

import math
import os
import logging
import re
import zlib

import torch

from .flavours import Flavour, get_flavour
from .weights import component_config, load_error, locate


class _CountsTruncation:
    """`.truncated` counts the encoded prompts that `overflow` says are cut; the first one warns."""

    truncated = 0

    def overflow(self, prompt: str) -> str | None:
        raise NotImplementedError

    def _count_truncated(self, prompts: list[str]) -> None:
        for p in prompts:
            over = self.overflow(p)
            if over:
                if not self.truncated:
                    logging.getLogger(__name__).warning(f"{type(self).__name__}: prompt truncated ({over}): {p!r}; "
                                                        f"later truncations are counted in .truncated")
                self.truncated += 1


class HashedWordEncoder(_CountsTruncation):
    CONTEXTS = (None, "phrase")

    def __init__(self, max_length: int, dim: int, pooled_dim: int, seed: int = 0, context: str | None = None):
        if context not in self.CONTEXTS:
            raise ValueError(f"hashed text encoder context {context!r}: must be one of {self.CONTEXTS}")
        self.max_length, self.dim, self.pooled_dim, self.seed, self.context = max_length, dim, pooled_dim, seed, context
        self.truncated = 0
        self._cache: dict[tuple[str, int], torch.Tensor] = {}
        pos = torch.arange(max_length)[:, None].float()
        freq = torch.exp(-math.log(1e4) * torch.arange(0, dim, 2).float() / dim)
        self.position_code = torch.zeros(max_length, dim)
        self.position_code[:, 0::2] = torch.sin(pos * freq)
        self.position_code[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]

    WORD = r"[a-z0-9]+"

    @classmethod
    def words(cls, prompt: str) -> list[str]:
        return re.findall(cls.WORD, prompt.lower())

    @classmethod
    def phrases(cls, prompt: str) -> list[int]:
        """The phrase index of each word of `words(prompt)`: phrases break at commas and the word `and`."""
        index, out = 0, []
        for tok in re.findall(cls.WORD + "|,", prompt.lower()):
            if tok in (",", "and"):
                index += 1
            if tok != ",":
                out.append(index)
        return out

    def _vector(self, word: str, dim: int, salt: int) -> torch.Tensor:
        key = (word, salt)
        if key not in self._cache:
            g = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{salt}:{word}".encode()))
            self._cache[key] = torch.randn(dim, generator=g)
        return self._cache[key]

    def overflow(self, prompt: str) -> str | None:
        n = len(self.words(prompt))
        return f"{n} words, the encoder keeps the first {self.max_length}" if n > self.max_length else None

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self._count_truncated(prompts)
        text = torch.zeros(len(prompts), self.max_length, self.dim)
        pooled = torch.zeros(len(prompts), self.pooled_dim)
        for b, prompt in enumerate(prompts):
            words = self.words(prompt)[: self.max_length]
            for i, w in enumerate(words):
                text[b, i] = self._vector(w, self.dim, 0) + self.position_code[i]
            if self.context == "phrase" and words:
                ids = torch.tensor(self.phrases(prompt)[: len(words)])
                vecs = torch.stack([self._vector(w, self.dim, 2) for w in words])
                sums = torch.zeros(int(ids.max()) + 1, self.dim).index_add_(0, ids, vecs)
                codes = sums / torch.bincount(ids).clamp(min=1).sqrt()[:, None]  # a word's norm
                text[b, : len(words)] += codes[ids]
            if words:
                pooled[b] = torch.stack([self._vector(w, self.pooled_dim, 1) for w in words]).mean(0)
        return text, pooled


class PromptTokens(_CountsTruncation):
    """Token counts of FLUX.1-dev's two tokenizers (T5 for the sequence, CLIP for the pooled vector), without
    the encoder weights: enough to tell which prompts would be truncated."""

    def __init__(self, weights: str | os.PathLike, max_length: int = 512):
        from transformers import CLIPTokenizer, T5TokenizerFast

        self.max_length, self.truncated = max_length, 0
        self.clip, self.t5 = (cls.from_pretrained(locate(weights, sub)[0], subfolder=sub, local_files_only=True)
                              for sub, cls in (("tokenizer", CLIPTokenizer), ("tokenizer_2", T5TokenizerFast)))

    def overflow(self, prompt: str) -> str | None:
        return _t5_clip_overflow(self.clip, self.t5, self.max_length, prompt)


def _t5_clip_overflow(clip, t5, t5_limit: int, prompt: str) -> str | None:
    cut = []
    for name, tok, limit in (("T5", t5, t5_limit), ("CLIP", clip, clip.model_max_length)):
        n = len(tok(prompt).input_ids)  # with the special tokens, as FluxPipeline.encode_prompt counts them
        if n > limit:
            cut.append(f"{name} {n} tokens, keeps {limit}")
    return "; ".join(cut) or None


class T5ClipEncoder(_CountsTruncation):
    """FLUX.1-dev text encoders (T5-XXL sequence + CLIP-L pooled) from local weights only."""

    def __init__(self, weights: str | os.PathLike, max_length: int = 512, dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu"):
        from diffusers import FluxPipeline
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        parts = {}
        model_types = {"text_encoder": ("clip_text_model",), "text_encoder_2": ("t5",)}
        for sub, cls in (("text_encoder", CLIPTextModel), ("tokenizer", CLIPTokenizer),
                         ("text_encoder_2", T5EncoderModel), ("tokenizer_2", T5TokenizerFast)):
            root, found = locate(weights, sub)
            if found is None:
                raise FileNotFoundError(f"text encoder weights not found: {root / sub}")
            kw = {"torch_dtype": dtype} if sub.startswith("text_encoder") else {}
            if sub in model_types:
                component_config(root, sub, "model_type", model_types[sub])
            try:
                parts[sub] = cls.from_pretrained(root, subfolder=sub, local_files_only=True, **kw)
            except (OSError, ValueError, RuntimeError) as e:
                raise load_error(root / sub, cls.__name__, e) from None
            if sub.startswith("text_encoder"):
                parts[sub] = parts[sub].to(device).eval().requires_grad_(False)
        self.pipe = FluxPipeline(scheduler=None, vae=None, transformer=None, **parts)
        self.max_length, self.truncated = max_length, 0
        self.dim = parts["text_encoder_2"].config.d_model
        self.pooled_dim = parts["text_encoder"].config.hidden_size

    def overflow(self, prompt: str) -> str | None:
        return _t5_clip_overflow(self.pipe.tokenizer, self.pipe.tokenizer_2, self.max_length, prompt)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self._count_truncated(prompts)
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


def prompt_checker(flavour: str | Flavour, weights: str | os.PathLike | None = None):
    """An object with `overflow(prompt)` for the flavour's text encoder, as light as possible: the hashed
    encoder itself, or only the FLUX tokenizers (no encoder weights) for `t5-clip`."""
    fl = get_flavour(flavour)
    if fl.text["kind"] == "t5-clip":
        if weights is None:
            raise FileNotFoundError(f"flavour {fl.name!r}: counting T5/CLIP tokens needs its tokenizers: pass the "
                                    "local diffusers FLUX folder (with tokenizer/ and tokenizer_2/)")
        return PromptTokens(weights, fl.text["max_length"])
    return build_text_encoder(fl)
