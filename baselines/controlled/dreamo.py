"""`dreamo`: DreamO's reference index embedding and feature-routing constraint on the shared backbone.

Reproduces (Mou et al., "DreamO", bytedance/DreamO):
- index embedding: a learned vector per reference position k, added to all tokens of reference k
  right after the input projection (DreamO's `idx_embedding`, nn.Embedding(10, 3072), in the
  transformer's hidden space; its condition embedding, one vector shared by every reference, is
  absorbed in it: a sum of two learned constants per k is one learned constant per k). Zero at
  initialisation, so training starts from the shared backbone;
- routing constraint: mask-level supervision, no point correspondences. For every double block j
  and reference i, M_i^j[v] = the attention of reference i's tokens over target token v (softmax
  over the target keys, as DreamO's Q_cond K_target^T, averaged over the reference's tokens and
  the heads); L_route = 1/(n_refs n_blocks) sum_j sum_i ||M_i^j - mask_i||^2, mask_i the binary
  target-token mask of subject i. Since M_i sums to 1, ||M - mask||^2 = |mask| - 2 (mass of M
  inside the mask) + ||M||^2: every map inside the mask costs less than any map outside it, and
  the minimum is the uniform map over the mask. References with an empty mask (subject not
  visible) or padded/dropped references are left out. Weight `routing_weight` (default 1).
SCAL and MDL are off (DreamO has no correspondence supervision).
Leaves out: the placeholder tokens ([ref#k] in the prompt), the task and style branches,
DreamO's three-stage training and its turbo/CFG-distillation LoRAs, and the routing term on
single-stream blocks (the attention hook sees the double-stream blocks only).
"""
from __future__ import annotations

from typing import Any

import torch

from mosaic.extension import Extension
from mosaic.losses import reference_attention

from .base import ControlledBaseline


def routing_loss(maps: torch.Tensor, token_masks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """maps [B, K, Nt] (each row a distribution over target tokens), token_masks [B, K, Nt] bool,
    valid [B, K] bool -> mean over valid (b, k) of sum_v (maps - mask)^2 (0 when none is valid)."""
    valid = valid & token_masks.any(-1)
    err = (maps - token_masks.to(maps.dtype)).pow(2).sum(-1)
    n = valid.sum()
    return (err * valid).sum() / n.clamp(min=1)


class RoutingProbe:
    """attn_hook: per double block, each reference's mean attention over the target, and its routing term."""

    def __init__(self, batch: dict[str, Any], blocks=None):
        self.token_masks = batch["token_masks"].flatten(2)  # [B, K, Nt]
        self.valid = batch["ref_mask"]
        self.blocks = blocks
        self.terms: list[torch.Tensor] = []

    def __call__(self, i: int, q: torch.Tensor, k: torch.Tensor, layout) -> None:
        if self.blocks is not None and i not in self.blocks:
            return
        b, n_k = self.valid.shape
        rows = torch.arange(layout.n_ref, device=q.device).expand(b, n_k, layout.n_ref)
        maps = reference_attention(q, k, layout, rows, "target", recompute=True).mean(2)  # [B, K, Nt]
        self.terms.append(routing_loss(maps, self.token_masks.to(q.device), self.valid.to(q.device)))

    def loss(self) -> torch.Tensor:
        if not self.terms:
            raise RuntimeError("routing probe was never called: pass it as attn_hook to the model's forward")
        return torch.stack(self.terms).mean()


class DreamOExtension(Extension):
    MODULES = ("dreamo_index",)
    DEFAULTS = {"routing_weight": 1.0, "blocks": None}

    def setup(self, model) -> None:
        p = next(model.parameters())
        emb = torch.nn.Embedding(model.max_refs, model.transformer.inner_dim, device=p.device, dtype=p.dtype)
        torch.nn.init.zeros_(emb.weight)
        model.dreamo_index = emb

    def forward_kwargs(self, model, batch, prompts, enc) -> dict[str, Any]:
        if enc.refs is None:
            return {}
        b, k = enc.refs.shape[:2]
        # called as a module (not .weight[:k]): ZeRO-3 gathers a module's partitioned weight on its call
        index = model.dreamo_index(torch.arange(k, device=enc.refs.device))
        return {"ref_offset": index.to(enc.refs.dtype)[None].expand(b, k, -1)}

    def attn_hook(self, batch):
        self._probe = RoutingProbe(batch, self.args["blocks"])
        return self._probe

    def losses(self, model, batch, step) -> dict[str, torch.Tensor]:
        return {"route": float(self.args["routing_weight"]) * self._probe.loss()}


class DreamO(ControlledBaseline):
    name = "dreamo"
    SETTINGS = ("loss.alpha=0", "loss.beta=0", "model.extension=baselines.controlled.dreamo:DreamOExtension")
