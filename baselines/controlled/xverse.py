"""`xverse`: XVerse's token-specific text-stream modulation on the shared backbone.

Reproduces (Chen et al., "XVerse", bytedance/XVerse `src/flux/block.py`): a small adapter maps
each reference's image embedding to a shared offset and per-block offsets of the modulation
input (the timestep/pooled embedding temb); for the text tokens that name that subject in the
prompt, and only those, every block (double and single stream) computes its AdaLN modulation
from temb + shared + per_block instead of temb (XVerse's delta_emb + delta_emb_cblock on the
masked tokens). The reference tokens stay in the joint attention, as XVerse's VAE-feature branch.
Here the image embedding is the adapter's own: a per-token MLP over the reference's codec tokens,
mean-pooled (no CLIP/SigLIP image encoder exists in the tiny world); the output layers start at
zero, so training starts from the shared backbone. The named tokens are the text-encoder tokens
whose characters overlap the subject's phrase in the prompt (batch `phrases`, prompt order;
found left to right). SCAL and MDL are off.
Leaves out: XVerse's text-embedding input to the adapter, its region-preservation and
text-image attention losses, the image-stream modulation variant, and its data pipeline.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from mosaic.extension import Extension
from mosaic.model import get_flavour
from mosaic.model.text import HashedWordEncoder
from mosaic.model.weights import locate

from .base import ControlledBaseline

WORDS = re.compile(HashedWordEncoder.WORD)  # the hashed encoder's words (of the lower-cased prompt)


class TextModAdapter(torch.nn.Module):
    """References' codec tokens [B, K, Nr, C] -> temb offsets [B, K, n_blocks, D]."""

    def __init__(self, in_channels: int, dim: int, n_blocks: int, hidden: int = 256):
        super().__init__()
        self.n_blocks, self.dim = n_blocks, dim
        self.embed = torch.nn.Sequential(torch.nn.Linear(in_channels, hidden), torch.nn.GELU())
        self.shared = torch.nn.Linear(hidden, dim)
        self.per_block = torch.nn.Linear(hidden, n_blocks * dim)
        for layer in (self.shared, self.per_block):
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)

    def forward(self, refs: torch.Tensor) -> torch.Tensor:
        e = self.embed(refs).mean(2)  # [B, K, hidden]
        return self.shared(e)[:, :, None] + self.per_block(e).unflatten(-1, (self.n_blocks, self.dim))


def phrase_spans(prompt: str, phrases: list[str]) -> list[tuple[int, int] | None]:
    """Character span of each phrase in the prompt (case-insensitive), searched left to right."""
    low, start, out = prompt.lower(), 0, []
    for ph in phrases:
        ph = ph.lower().strip()
        i = low.find(ph, start) if ph else -1
        if i < 0 and ph:
            i = low.find(ph)
        out.append(None if i < 0 else (i, i + len(ph)))
        if i >= 0:
            start = i + len(ph)
    return out


def subject_token_mask(prompts: list[str], phrases: list[list[str]], k_max: int,
                       token_spans) -> torch.Tensor:
    """[B, K, L] bool: text token l names subject k. token_spans(prompt) -> [(start, end)] per text position."""
    spans = [token_spans(p) for p in prompts]
    length = max([len(s) for s in spans] + [1])
    mask = torch.zeros(len(prompts), k_max, length, dtype=torch.bool)
    for b, (prompt, phs) in enumerate(zip(prompts, phrases)):
        for k, span in enumerate(phrase_spans(prompt, phs)):
            if span is not None:
                for l, (s, e) in enumerate(spans[b]):
                    mask[b, k, l] = s < span[1] and e > span[0] and e > s
    return mask


class XVerseExtension(Extension):
    MODULES = ("xverse_adapter",)
    DEFAULTS = {"hidden": 256}

    def setup(self, model) -> None:
        p = next(model.parameters())
        tr = model.transformer
        n_blocks = len(tr.transformer_blocks) + len(tr.single_transformer_blocks)
        model.xverse_adapter = TextModAdapter(model.in_channels, tr.inner_dim, n_blocks,
                                              int(self.args["hidden"])).to(p.device, p.dtype)
        self._spans = self._token_spans()

    def _token_spans(self):
        """The text encoder's tokens as character spans of the prompt (its max_length positions)."""
        text = get_flavour(self.cfg.model.flavour).text
        if text["kind"] == "hashed":
            return lambda prompt: [m.span() for m in WORDS.finditer(prompt.lower())][: text["max_length"]]
        from transformers import T5TokenizerFast

        root, sub = locate(self.cfg.model.weights, "tokenizer_2")
        tok = T5TokenizerFast.from_pretrained(root, subfolder=sub, local_files_only=True)
        return lambda prompt: tok(prompt, max_length=text["max_length"], truncation=True,
                                  return_offsets_mapping=True)["offset_mapping"]

    def forward_kwargs(self, model, batch, prompts, enc) -> dict[str, Any]:
        if enc.refs is None:
            return {}
        b, k = enc.refs.shape[:2]
        unnamed = [(i, j) for i, phs in enumerate(batch["phrases"]) for j, ph in enumerate(phs)
                   if not ph.strip() and bool(enc.ref_mask[i, j])]
        if unnamed:
            raise ValueError(f"xverse: reference {unnamed[0][1]} of sample {unnamed[0][0]} has no phrase; the "
                             "modulation needs the words naming each subject in the prompt (pass phrases)")
        n_text = enc.text.shape[1]
        mask = subject_token_mask(prompts, batch["phrases"], k, self._spans)[..., :n_text]
        mask = torch.nn.functional.pad(mask, (0, n_text - mask.shape[-1]))
        mask = mask & enc.ref_mask.cpu()[..., None]  # dropped or padded references name nothing
        offsets = model.xverse_adapter(enc.refs)  # [B, K, n_blocks, D]
        return {"text_temb_offset": torch.einsum("bkl,bknd->bnld", mask.to(offsets), offsets)}


class XVerse(ControlledBaseline):
    name = "xverse"
    SETTINGS = ("loss.alpha=0", "loss.beta=0", "model.extension=baselines.controlled.xverse:XVerseExtension")
