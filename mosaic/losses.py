"""MOSAIC's attention losses, SCAL and MDL, computed from the annotated reference rows only.

Both losses read the reference->target attention of the double-stream blocks. This module
records it through the model's attention hook and turns it into the two losses, with the
paper's definitions by default and the public training code's choices as switches.

Usage (one probe per forward pass):

    cfg = LossConfig.preset("paper")                 # or LossConfig.from_dict({...})
    probe = AttentionProbe(cfg, batch)               # reads batch["ref_tokens"]
    pred = model(..., attn_hook=probe)               # model calls probe(i, q, k, layout)
    out = correspondence_losses(probe, batch, step)  # {"scal", "mdl", "loss", "alpha", "beta"}
    total = diffusion_loss + out["loss"]             # out["loss"] = alpha*scal + beta(step)*mdl

Definitions (b: sample, k: reference, j: annotated point, G(u) the global row of a reference token):
  A[u, v]  mean over the selected blocks and the heads of softmax(q_u . k_v / sqrt(d)), v a target
           token. `normalize_over="target"` (the paper's formula, exp(Q_u K_v) / sum over target v,
           as the public code does): the softmax runs over the target keys. `"all"` (preset
           `paper-all`): the model's own softmax over every key reference row u attends to (text,
           target, and its OWN reference; never the other references), then the target columns.
  SCAL     -(1/K) sum_k (1/P_k) sum_j log(A[G(u_j^k), v_j^k] + eps)
  MDL      a^(k) = normalise((1/P_k) sum_j A[G(u_j^k), :]);
           -(1/(K(K-1))) sum_{i != j} 1/2 (KL(a^i || a^j) + KL(a^j || a^i)), 0 when K < 2.
           `divergence="jsd"` uses Jensen-Shannon; `mdl_rows="all"` averages every token of
           reference k, no point mask (both upstream). KL(p || q) = sum p (log(p+eps) - log(q+eps)).
Batch conventions (choices of this harness):
  - K counts the references of a sample that have at least one point (P_k > 0); a reference
    without points is left out of SCAL and, with `mdl_rows="points"`, of MDL. With
    `mdl_rows="all"` MDL counts every real reference (`ref_mask`).
  - Each loss is computed per sample, then averaged over all samples of the batch; a sample
    with no valid term (K = 0 for SCAL, K < 2 for MDL) contributes 0, as the formulas say.
  - Upstream averages SCAL over all pairs of the sample at once; here, as in the paper, over
    points within a reference, then over references. They agree when all P_k are equal.
Cost: each block gives a [B, K, P, N_target] map (head-averaged, fp32) from a gather of the
annotated query rows, summed over blocks as they run; the per-head [N_ref x N_target] matrix
exists only under `mdl_rows="all"`. There is no loop over points or references.
Gradient checkpointing: `AttentionProbe(recompute=True)` (default) checkpoints the map
computation itself, so its per-head intermediates are recomputed in backward, not kept. The
fused model calls the hook outside its checkpointed blocks; a model that calls it inside them
calls it again while recomputing a block: the probe then recomputes (autograd needs it) without
recording that block twice. Values and gradients are the same either way (tested).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

CHOICES = {"normalize_over": ("all", "target"), "mdl_rows": ("points", "all"), "divergence": ("skl", "jsd"),
           "calibrate": ("none", "grad-norm")}


@dataclass(frozen=True)
class LossConfig:
    alpha: float = 0.4  # SCAL weight
    beta: float = 0.6  # MDL weight (after warm-up)
    beta_warmup: tuple[int, int] | None = None  # (start, end): beta ramps linearly from 0 at start to beta at end
    normalize_over: str = "target"
    mdl_rows: str = "points"
    divergence: str = "skl"
    blocks: tuple[int, ...] | None = None  # double-stream block indices; None = all
    eps: float = 1e-8
    # "grad-norm": alpha and beta are ratios of each attention loss's gradient norm to the diffusion loss's,
    # measured on `calibrate_batches` batches before the first step (mosaic.train.calibrate)
    calibrate: str = "none"
    calibrate_batches: int = 8

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"loss.{name}: {getattr(self, name)!r} is not one of {allowed}")
        if not isinstance(self.calibrate_batches, int) or self.calibrate_batches < 1:
            raise ValueError(f"loss.calibrate_batches: must be an integer >= 1, got {self.calibrate_batches!r}")
        for name in ("alpha", "beta", "eps"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise ValueError(f"loss.{name}: must be a number >= 0, got {getattr(self, name)!r}")
        if self.beta_warmup is not None:
            w = tuple(self.beta_warmup)
            if len(w) != 2 or not all(isinstance(s, int) for s in w) or not 0 <= w[0] < w[1]:
                raise ValueError(f"loss.beta_warmup: expected [start, end] steps with 0 <= start < end, "
                                 f"got {self.beta_warmup!r}")
            object.__setattr__(self, "beta_warmup", w)
        if self.blocks is not None:
            b = tuple(self.blocks)
            if not b or not all(isinstance(i, int) and i >= 0 for i in b) or len(set(b)) != len(b):
                raise ValueError(f"loss.blocks: expected distinct block indices >= 0, got {self.blocks!r}")
            object.__setattr__(self, "blocks", b)

    @classmethod
    def preset(cls, name: str, **overrides) -> "LossConfig":
        presets = {
            "paper": {},
            "paper-all": dict(normalize_over="all"),  # the model's own softmax, then the target columns
            "upstream-code": dict(alpha=0.1, beta=1.0, beta_warmup=(10_000, 11_000), divergence="jsd",
                                  mdl_rows="all", normalize_over="target"),
        }
        if name not in presets:
            raise ValueError(f"loss.preset: {name!r} is not one of {tuple(presets)}")
        return cls(**{**presets[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LossConfig":
        """From a config section: optional `preset` (default "paper") plus field overrides."""
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"preset"})
        if unknown:
            raise ValueError(f"loss: unknown key(s) {unknown}; known: {sorted(known | {'preset'})}")
        return cls.preset(d.pop("preset", "paper"), **d)

    def to_params(self) -> dict[str, Any]:
        """Flat dict of plain values, one per switch, for run parameters."""
        p = asdict(self)
        p["beta_warmup"] = "none" if self.beta_warmup is None else f"{self.beta_warmup[0]}-{self.beta_warmup[1]}"
        p["blocks"] = "all" if self.blocks is None else ",".join(map(str, self.blocks))
        return p

    def beta_at(self, step: int) -> float:
        if self.beta_warmup is None:
            return float(self.beta)
        start, end = self.beta_warmup
        return float(self.beta) * min(max((step - start) / (end - start), 0.0), 1.0)


# ---------------------------------------------------------------- the attention map

def reference_attention(q: torch.Tensor, k: torch.Tensor, layout, rows: torch.Tensor,
                        normalize_over: str, recompute: bool = False) -> torch.Tensor:
    """Head-averaged attention of chosen reference rows over the target keys, for one block.

    q, k: [B, H, N, d] after RMSNorm and RoPE. rows: [B, K, R] local token indices inside each
    reference (reference k starts at n_text + n_target + k * n_ref). Returns [B, K, R, N_target]
    in fp32 (fp64 if q is fp64). `recompute`: keep only the inputs for backward and recompute the
    [B, H, K*R, N] intermediates there (torch.utils.checkpoint), as gradient checkpointing does
    for the blocks.
    """
    b, h, _, d = q.shape
    n_k, r = rows.shape[1:]
    L, nt, nr = layout.n_text, layout.n_target, layout.n_ref
    dtype = torch.promote_types(q.dtype, torch.float32)
    start = L + nt + nr * torch.arange(n_k, device=rows.device)
    index = (start[:, None] + rows).reshape(b, 1, n_k * r, 1).expand(b, h, n_k * r, d)
    q_rows = q.gather(2, index).to(dtype)  # [B, H, K*R, d]
    keys = (k[:, :, L:L + nt].to(dtype),)  # target keys
    if normalize_over == "all":  # plus the other keys this row sees: text and its own reference
        keys += (k[:, :, :L], k[:, :, L + nt:L + nt + n_k * nr].unflatten(2, (n_k, nr)))
    if recompute and torch.is_grad_enabled():
        a = checkpoint(_row_attention, q_rows, *keys, use_reentrant=False)
    else:
        a = _row_attention(q_rows, *keys)
    return a.unflatten(1, (n_k, r))


def _row_attention(q_rows, k_target, k_text=None, k_own=None):
    """mean_h softmax(q . k / sqrt(d)) on the target keys; the softmax spans k_text and k_own too if given."""
    kr, d = q_rows.shape[-2:]
    q_rows = q_rows * d ** -0.5
    logits = q_rows @ k_target.transpose(-1, -2)  # [B, H, K*R, Nt]
    if k_text is None:
        a = logits.softmax(-1)
    else:  # log-sum-exp over text, target and own-reference keys
        n_k = k_own.shape[2]
        lse_text = (q_rows @ k_text.to(q_rows.dtype).transpose(-1, -2)).logsumexp(-1)
        own = q_rows.unflatten(2, (n_k, kr // n_k)) @ k_own.to(q_rows.dtype).transpose(-1, -2)  # [B, H, K, R, Nr]
        lse = torch.stack([lse_text, logits.logsumexp(-1), own.logsumexp(-1).flatten(2)]).logsumexp(0)
        a = (logits - lse[..., None]).exp()
    return a.mean(1)  # [B, K*R, Nt]


class AttentionProbe:
    """The model's `attn_hook`: sums `reference_attention` over the selected double blocks.

    Rows: the annotated points (`ref_tokens`), or every reference token under mdl_rows="all".
    Use one probe per forward pass. `recompute=True` recomputes each block's map intermediates in
    backward instead of keeping them: [B, H, K*R, Nt] fp32 tensors, 0.15 GB each per block at FLUX
    scale with K = 6 and 256 points, 0.6 GB with mdl_rows="all". Turn it off only when memory is
    no concern (small CPU runs); it costs one more forward of the maps.
    """

    def __init__(self, cfg: LossConfig, batch: dict[str, Any], recompute: bool = True):
        self.cfg, self.recompute = cfg, recompute
        self.ref_tokens = batch["ref_tokens"]  # [B, K, P] local token index in its reference
        self.total = None  # sum over recorded blocks of [B, K, R, Nt]
        self.seen: list[int] = []  # recorded blocks
        self.ran: set[int] = set()  # every block the model called the hook for
        self.layout = None

    def __call__(self, i: int, q: torch.Tensor, k: torch.Tensor, layout) -> None:
        self.ran.add(i)
        if self.cfg.blocks is not None and i not in self.cfg.blocks:
            return
        b, n_k, _ = self.ref_tokens.shape
        if self.layout is None:  # first call: check the batch against the model's sequence
            if n_k > layout.k_max or q.shape[0] != b:
                raise ValueError(f"attention probe: batch has B={b}, K={n_k} but the model ran "
                                 f"B={q.shape[0]}, k_max={layout.k_max}")
            if self.ref_tokens.numel() and int(self.ref_tokens.max()) >= layout.n_ref:
                raise ValueError(f"batch ref_tokens: index {int(self.ref_tokens.max())} >= "
                                 f"tokens per reference {layout.n_ref}")
            self.layout = layout
        if self.cfg.mdl_rows == "all":
            rows = torch.arange(layout.n_ref, device=q.device).expand(b, n_k, layout.n_ref)
        else:
            rows = self.ref_tokens.to(q.device)
        a = reference_attention(q, k, layout, rows, self.cfg.normalize_over, self.recompute)
        if i in self.seen:  # recomputation under gradient checkpointing: already recorded
            return
        self.seen.append(i)
        self.total = a if self.total is None else self.total + a

    def maps(self) -> torch.Tensor:
        """Mean over the recorded blocks: [B, K, R, Nt] (R = P, or n_ref under mdl_rows="all")."""
        if not self.ran:
            raise RuntimeError("attention probe was never called: pass it as attn_hook to the model's forward")
        missing = sorted(set(self.cfg.blocks or ()) - self.ran)
        if missing:
            raise ValueError(f"loss.blocks: block(s) {missing} never ran; the model's double blocks are "
                             f"0..{max(self.ran)}")
        return self.total / len(self.seen)

    def point_maps(self) -> torch.Tensor:
        """[B, K, P, Nt]: the rows of the annotated points."""
        a = self.maps()
        if self.cfg.mdl_rows == "all":
            idx = self.ref_tokens.to(a.device)
            a = a.gather(2, idx[..., None].expand(*idx.shape, a.shape[-1]))
        return a


# ---------------------------------------------------------------- the losses

def scal_loss(point_maps: torch.Tensor, target_tokens: torch.Tensor, point_mask: torch.Tensor,
              eps: float) -> torch.Tensor:
    """point_maps [B, K, P, Nt]; target_tokens, point_mask [B, K, P]. Mean over the batch."""
    p = point_maps.gather(-1, target_tokens[..., None]).squeeze(-1)  # A[G(u_j^k), v_j^k]
    m = point_mask.to(p.dtype)
    n_points = m.sum(-1)  # P_k
    per_ref = -((p + eps).log() * m).sum(-1) / n_points.clamp(min=1)
    valid = (n_points > 0).to(p.dtype)
    per_sample = (per_ref * valid).sum(-1) / valid.sum(-1).clamp(min=1)
    return per_sample.mean()


def reference_distributions(maps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """a^(k): weighted mean of each reference's rows, normalised over the target. [B, K, Nt]."""
    w = weights.to(maps.dtype)
    m = torch.einsum("bkrn,bkr->bkn", maps, w) / w.sum(-1, keepdim=True).clamp(min=1)
    return m / m.sum(-1, keepdim=True).clamp(min=torch.finfo(m.dtype).tiny)


def pairwise_divergence(a: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """[B, K, Nt] -> [B, K, K] symmetric divergences between every pair of references."""
    if kind == "skl":  # 1/2 (KL(i||j) + KL(j||i)); KL(i||j) = sum a_i log a_i - sum a_i log a_j
        log_a = (a + eps).log()
        cross = torch.einsum("bin,bjn->bij", a, log_a)  # sum_n a_i log a_j
        kl = cross.diagonal(dim1=1, dim2=2)[..., :, None] - cross
        return 0.5 * (kl + kl.transpose(1, 2))
    p, q = a[:, :, None], a[:, None, :]  # [B, K, 1, Nt], [B, 1, K, Nt]
    log_m = (0.5 * (p + q) + eps).log()
    kl_pm = (p * ((p + eps).log() - log_m)).sum(-1)
    kl_qm = (q * ((q + eps).log() - log_m)).sum(-1)
    return 0.5 * (kl_pm + kl_qm)


def mdl_loss(a: torch.Tensor, valid: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """a [B, K, Nt]; valid [B, K] bool. Negative mean divergence over ordered pairs i != j."""
    div = pairwise_divergence(a, kind, eps)
    eye = torch.eye(a.shape[1], dtype=torch.bool, device=a.device)
    pairs = (valid[:, :, None] & valid[:, None, :] & ~eye).to(div.dtype)
    per_sample = (div * pairs).sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)  # 0 when K < 2
    return -per_sample.mean()


def correspondence_losses(probe: AttentionProbe, batch: dict[str, Any], step: int) -> dict[str, Any]:
    """SCAL, MDL and their weighted sum `loss` (alpha * scal + beta(step) * mdl)."""
    cfg = probe.cfg
    maps = probe.maps()
    dev = maps.device
    target_tokens, point_mask = batch["target_tokens"].to(dev), batch["point_mask"].to(dev)
    if target_tokens.numel() and int(target_tokens.max()) >= maps.shape[-1]:
        raise ValueError(f"batch target_tokens: index {int(target_tokens.max())} >= target tokens {maps.shape[-1]}")
    scal = scal_loss(probe.point_maps(), target_tokens, point_mask, cfg.eps)
    if cfg.mdl_rows == "all":
        valid = batch["ref_mask"].to(dev)
        a = reference_distributions(maps, valid[..., None].expand(maps.shape[:3]))
    else:
        valid = point_mask.any(-1)
        a = reference_distributions(maps, point_mask)
    mdl = mdl_loss(a, valid, cfg.divergence, cfg.eps)
    alpha, beta = float(cfg.alpha), cfg.beta_at(step)
    return {"scal": scal, "mdl": mdl, "loss": alpha * scal + beta * mdl, "alpha": alpha, "beta": beta}
