"""The reference-branch LoRA: which FLUX layers carry it, and how it touches reference tokens only.

The LoRA itself is a standard peft `LoraConfig` injected into the diffusers transformer, so it
saves and loads in the diffusers/peft FLUX format. What is MOSAIC-specific is *where* it acts:
only on reference tokens (OminiControl's condition branch). `ref_only(layer, x, start)` applies the
frozen base weights to every token once and adds the low-rank delta to tokens `x[:, start:]` only.

Targets are named per stream: "x_embedder", "double.<module>" (every FluxTransformerBlock) and
"single.<module>" (every FluxSingleTransformerBlock). Only layers that see reference tokens are
allowed (the text stream of the double blocks never does).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

DOUBLE_MODULES = ("norm1.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.0.proj", "ff.net.2")
SINGLE_MODULES = ("norm.linear", "proj_mlp", "proj_out", "attn.to_q", "attn.to_k", "attn.to_v")
ALLOWED_TARGETS = (("x_embedder",) + tuple(f"double.{m}" for m in DOUBLE_MODULES)
                   + tuple(f"single.{m}" for m in SINGLE_MODULES))
# Upstream MOSAIC / OminiControl target list (upstream rank 512).
UPSTREAM_TARGETS = ("x_embedder",) + tuple(
    f"double.{m}" for m in ("norm1.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.2")
) + tuple(f"single.{m}" for m in SINGLE_MODULES)

# peft's init_lora_weights per name: A ~ N(0, 1/rank), or kaiming-uniform(a=sqrt(5)) (A's bound 1/sqrt(fan_in)); B = 0
LORA_INITS = {"gaussian": "gaussian", "kaiming": True}


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 16
    alpha: float | None = None  # None -> rank (scaling 1)
    targets: tuple[str, ...] = UPSTREAM_TARGETS
    dropout: float = 0.0
    init: str = "gaussian"  # peft init_lora_weights: "gaussian" (upstream MOSAIC, OminiControl) or "kaiming" (True)

    def __post_init__(self):
        if not (isinstance(self.rank, int) and self.rank > 0):
            raise ValueError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in LORA_INITS:
            raise ValueError(f"lora.init must be one of {tuple(LORA_INITS)}, got {self.init!r}")
        object.__setattr__(self, "targets", tuple(self.targets))
        if not self.targets:
            raise ValueError("lora.targets is empty")
        bad = [t for t in self.targets if t not in ALLOWED_TARGETS]
        if bad:
            raise ValueError(f"lora.targets {bad} are not layers that see reference tokens; "
                             f"allowed: {list(ALLOWED_TARGETS)}")

    def target_regex(self) -> str:
        """Full-module-name regex for peft (string target_modules are matched with re.fullmatch)."""
        esc = lambda m: m.replace(".", r"\.")  # noqa: E731
        alts = ["x_embedder"] if "x_embedder" in self.targets else []
        for prefix, stream in (("double.", "transformer_blocks"), ("single.", "single_transformer_blocks")):
            mods = [esc(t[len(prefix):]) for t in self.targets if t.startswith(prefix)]
            if mods:
                alts.append(rf"{stream}\.\d+\.({'|'.join(mods)})")
        return "^(" + "|".join(alts) + ")$"

    def peft_config(self) -> LoraConfig:
        return LoraConfig(r=self.rank, lora_alpha=self.rank if self.alpha is None else self.alpha,
                          lora_dropout=self.dropout, target_modules=self.target_regex(),
                          init_lora_weights=LORA_INITS[self.init])


def base_layer(layer: torch.nn.Module) -> torch.nn.Module:
    """The frozen layer under a peft LoRA wrapper (or the layer itself)."""
    return layer.base_layer if isinstance(layer, LoraLayer) else layer


def ref_only(layer: torch.nn.Module, x: torch.Tensor, start: int) -> torch.Tensor:
    """`layer(x)` for x [B, N, in] with the LoRA delta added to tokens x[:, start:] only.

    Base weights run once over all tokens; the low-rank delta runs on the reference slice.
    """
    if not isinstance(layer, LoraLayer):
        return layer(x)
    if layer.merged:
        raise RuntimeError("a merged LoRA cannot be restricted to reference tokens; unmerge it first")
    y = layer.base_layer(x)
    if layer.disable_adapters or start >= x.shape[1]:
        return y
    xr = x[:, start:]
    for name in layer.active_adapters:
        if name in layer.lora_A:
            a, b = layer.lora_A[name], layer.lora_B[name]
            delta = b(a(layer.lora_dropout[name](xr.to(a.weight.dtype)))) * layer.scaling[name]
            y[:, start:] += delta.to(y.dtype)
    return y
