"""`mosaic plan`: the per-GPU memory of a training config, per ZeRO stage and GPU count, and the cards it fits.

Why it exists: before a 12B FLUX.1-dev LoRA run is submitted, a researcher needs to know whether
it fits a 24, 40, 48, 80 or 141 GB card, and what ZeRO stage and GPU count make it fit. Nothing
here needs weights or a GPU:

* parameters are counted exactly: the flavour's `FluxTransformer2DModel` and the config's peft
  LoRA are built on the `meta` device (no memory, no weights);
* model states per trainable parameter follow DeepSpeed's mixed precision: bf16 weights (2 B) and
  bf16 gradients (2 B), and an optimizer partition holding fp32 master weights, the fp32 gradient
  of the partition and AdamW's two fp32 moments (16 B); under fp32: 4 + 4 + 8 B. ZeRO stage >= 1
  divides the optimizer partition by the GPU count, >= 2 also the gradients, 3 also every weight,
  frozen ones included (DeepSpeed partitions the whole module). Stage 3 adds a gathered working
  set of two blocks' weights (the one running and the one prefetched);
* activations are measured, not guessed: one forward of the same fused MOSAIC blocks at the tiny
  width (hidden 128), with the config's LoRA targets at the same rank-to-width ratio and the same
  text : target : reference token proportions, counts the bytes autograd saves for the backward
  (parameters excluded, shared storage counted once). Per token and block this is a number of
  hidden-width elements (`per_token_block`), which scales to the real width, token count and
  batch. Without gradient checkpointing every block's saved tensors live at the backward's start;
  with it (each block checkpointed, as MosaicTransformer does) only each block's input (one
  hidden-width vector per token) is kept, plus one block's saved tensors while it is recomputed.
  The attention probe of the SCAL/MDL losses keeps only its annotated rows and is not counted.
* cards: a plan fits a card when its total is at most the card's memory less 1 GiB (CUDA context,
  allocator slack). The total is the steady training state: it leaves out allocator fragmentation,
  the transient buffers of the backward, and the load: the trainer builds the model in fp32 on the
  device before DeepSpeed casts it to bf16 (and partitions it at stage 3), a transient of 4 B per
  parameter (48 GB for FLUX.1-dev) that a small card must survive first.

`reference_check()` compares the estimate with the peaks measured on an H100 (upstream-style LoRA on
all tokens, ZeRO-2, one GPU; see REFERENCE).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace

import torch

from .config import Config, load_config

GiB = 2**30
STAGES = (0, 1, 2, 3)
GPU_COUNTS = (1, 2, 4, 8)
CARDS_GB = (24, 40, 48, 80, 141)
RESERVE_GIB = 1.0  # CUDA context and allocator slack, per card
MEASURE_WIDTH_FLAVOUR = "tiny"  # the flavour whose blocks are run to measure saved activations
# Measured peaks, one H100 80GB, random FLUX.1-dev weights, bf16, gradient checkpointing, 512 text tokens,
# 32x32 target tokens, K = 4 references of 32x32 tokens, peft LoRA on the upstream targets applied to all
# tokens, DeepSpeed ZeRO-2, client AdamW (rank -> GiB).
REFERENCE = {"rank": {16: 26.7, 128: 32.0, 512: 60.3}, "refs": 4, "size": 512, "stage": 2, "gpus": 1}


@dataclass(frozen=True)
class Counts:
    """Exact parameter counts of the model a config trains."""
    frozen: int
    trainable: int
    largest_block: int  # parameters of the largest transformer block (stage 3's gathered unit)
    hidden: int  # the transformer width
    double_blocks: int
    single_blocks: int


@dataclass(frozen=True)
class Tokens:
    text: int
    target: tuple[int, int]  # token grid
    ref: tuple[int, int]
    refs: int  # K
    batch: int

    @property
    def n(self) -> int:
        return self.text + math.prod(self.target) + self.refs * math.prod(self.ref)


@dataclass(frozen=True)
class Activations:
    """Saved hidden-width elements per token of one block (double, single), measured at the tiny width."""
    double: float
    single: float


@dataclass(frozen=True)
class Estimate:
    stage: int
    gpus: int
    params: float  # bytes per GPU: frozen + trainable weights
    grads: float
    optim: float
    workspace: float  # ZeRO-3's gathered blocks
    activations: float
    ema: float

    @property
    def states(self) -> float:
        return self.params + self.grads + self.optim

    @property
    def total(self) -> float:
        return self.states + self.workspace + self.activations + self.ema

    def fits(self, cards=CARDS_GB) -> list[int]:
        return [c for c in cards if self.total / GiB <= card_gib(c) - RESERVE_GIB]


def card_gib(gb: int) -> float:
    """A card's memory in GiB: the marketed "GB" of GPU memory are GiB, except the H200's 141 GB (139.8 GiB)."""
    return 139.8 if gb == 141 else float(gb)


def _lora_spec(cfg: Config, rank: int | None = None):
    from .model.lora import LoraSpec, UPSTREAM_TARGETS

    return LoraSpec(rank=rank or cfg.model.lora_rank, alpha=cfg.model.lora_alpha,
                    targets=tuple(cfg.model.lora_targets or UPSTREAM_TARGETS), dropout=cfg.model.lora_dropout)


def _build(flavour, lora, device: str, **transformer_overrides):
    from diffusers import FluxTransformer2DModel

    from .model.transformer import MosaicTransformer

    with torch.device(device):
        tr = FluxTransformer2DModel(**{**flavour.transformer, **transformer_overrides})
        return MosaicTransformer(tr, flavour, lora, max_refs=max(flavour.max_refs, 1))


def count_parameters(cfg: Config) -> Counts:
    """Exact counts, from the flavour's transformer and the config's LoRA built on the meta device."""
    from .model.flavours import get_flavour

    fl = get_flavour(cfg.model.flavour)
    m = _build(fl, _lora_spec(cfg) if cfg.train.mode == "lora" else None, "meta")
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in m.parameters() if not p.requires_grad)
    tr = m.transformer
    blocks = [*tr.transformer_blocks, *tr.single_transformer_blocks]
    largest = max(sum(p.numel() for p in b.parameters()) for b in blocks)
    return Counts(frozen, trainable, largest, tr.inner_dim, len(tr.transformer_blocks),
                  len(tr.single_transformer_blocks))


def token_counts(cfg: Config, refs: int) -> Tokens:
    """Text, target and reference tokens of one sample: the flavour's text length, image side / (codec
    downsample x patch) per side."""
    from .model.flavours import get_flavour

    fl = get_flavour(cfg.model.flavour)
    per = fl.codec["downsample"] * fl.codec["patch"]
    for key, size in (("data.target_size", cfg.data.target_size), ("data.ref_size", cfg.data.ref_size)):
        if size % per:
            raise ValueError(f"{key} = {size}: must be a multiple of {per} (codec downsample x patch)")
    t, r = cfg.data.target_size // per, cfg.data.ref_size // per
    return Tokens(fl.text["max_length"], (t, t), (r, r), refs, cfg.train.batch_size)


def _saved_elements(model, tokens: Tokens) -> float:
    """Elements autograd saves for the backward in one forward (parameters excluded, storage counted once)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes() // t.element_size()
        return t

    tr = model.transformer
    nt, nr = math.prod(tokens.target), math.prod(tokens.ref)
    g = torch.Generator().manual_seed(0)
    x = dict(target=torch.randn(1, nt, tr.config.in_channels, generator=g),
             refs=torch.randn(1, tokens.refs, nr, tr.config.in_channels, generator=g) if tokens.refs else None,
             ref_mask=None, text=torch.randn(1, tokens.text, tr.config.joint_attention_dim, generator=g),
             pooled=torch.randn(1, tr.config.pooled_projection_dim, generator=g), timestep=torch.full((1,), 0.5))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**x, target_grid=tokens.target, ref_grid=tokens.ref)
    return float(sum(seen.values()))


def _scaled_tokens(tokens: Tokens) -> Tokens:
    """The same text : target : reference proportions, with every grid side at most 16 tokens."""
    f = max(1, math.ceil(max(*tokens.target, *tokens.ref) / 16))
    shrink = lambda grid: (max(1, grid[0] // f), max(1, grid[1] // f))  # noqa: E731
    return replace(tokens, text=max(1, tokens.text // f**2), target=shrink(tokens.target), ref=shrink(tokens.ref),
                   batch=1)


def measure_activations(cfg: Config, counts: Counts, tokens: Tokens) -> Activations:
    """Per-token, per-block saved elements (in units of the width), from the fused forward at the tiny width.

    Three models at that width (1 double + 1 single block, 2 + 1, 1 + 2) differ by exactly one double or
    one single block; the LoRA rank is scaled by width / real width (at least 1)."""
    from .model.flavours import get_flavour

    fl, small = get_flavour(cfg.model.flavour), get_flavour(MEASURE_WIDTH_FLAVOUR)
    dims = {k: small.transformer[k] for k in ("attention_head_dim", "num_attention_heads", "axes_dims_rope")}
    width = dims["attention_head_dim"] * dims["num_attention_heads"]
    lora = None
    if cfg.train.mode == "lora":
        lora = _lora_spec(cfg, rank=max(1, round(cfg.model.lora_rank * width / counts.hidden)))
    toks = _scaled_tokens(tokens)
    saved = {}
    torch.manual_seed(0)
    for layers in ((1, 1), (2, 1), (1, 2)):
        m = _build(replace(fl, max_refs=max(tokens.refs, 1)), lora, "cpu", num_layers=layers[0],
                   num_single_layers=layers[1], **dims)
        if lora is None:
            m.requires_grad_(True)
        saved[layers] = _saved_elements(m, toks)
    per = toks.n * width
    return Activations(double=(saved[(2, 1)] - saved[(1, 1)]) / per, single=(saved[(1, 2)] - saved[(1, 1)]) / per)


def estimate(counts: Counts, tokens: Tokens, act: Activations, *, stage: int, gpus: int, bf16: bool = True,
             checkpointing: bool = True, ema: bool = False) -> Estimate:
    """Bytes per GPU of one configuration (see the module docstring for what each term holds)."""
    if stage not in STAGES or gpus < 1:
        raise ValueError(f"ZeRO stage must be one of {STAGES} and gpus >= 1, got stage={stage}, gpus={gpus}")
    w = 2 if bf16 else 4  # bytes of a weight, a gradient, an activation
    opt = 16 if bf16 else 8  # fp32 master + fp32 gradient partition + 2 moments; fp32: the 2 moments
    div = lambda on: gpus if on else 1  # noqa: E731
    params = (counts.frozen + counts.trainable) * w / div(stage >= 3)
    grads = counts.trainable * w / div(stage >= 2)
    optim = counts.trainable * opt / div(stage >= 1)
    workspace = 2 * counts.largest_block * w if stage >= 3 and gpus > 1 else 0.0
    d, n, b = counts.hidden, tokens.n, tokens.batch
    per_block = {"double": act.double * n * d * w * b, "single": act.single * n * d * w * b}
    if checkpointing:  # every block's input kept; one block's saved tensors while it is recomputed
        activations = (counts.double_blocks + counts.single_blocks) * n * d * w * b + max(per_block.values())
    else:
        activations = counts.double_blocks * per_block["double"] + counts.single_blocks * per_block["single"]
    return Estimate(stage, gpus, params, grads, optim, workspace, activations, counts.trainable * w if ema else 0.0)


@dataclass(frozen=True)
class Plan:
    counts: Counts
    tokens: Tokens
    act: Activations
    bf16: bool
    checkpointing: bool
    ema: bool

    def at(self, stage: int, gpus: int, checkpointing: bool | None = None) -> Estimate:
        ck = self.checkpointing if checkpointing is None else checkpointing
        return estimate(self.counts, self.tokens, self.act, stage=stage, gpus=gpus, bf16=self.bf16,
                        checkpointing=ck, ema=self.ema)


def make_plan(cfg: Config, refs: int) -> Plan:
    counts = count_parameters(cfg)
    tokens = token_counts(cfg, refs)
    bf16 = cfg.train.precision != "fp32"  # auto: bf16 on GPU, where this plan applies
    return Plan(counts, tokens, measure_activations(cfg, counts, tokens), bf16, cfg.model.gradient_checkpointing,
                cfg.train.ema_decay > 0)


def table(plan: Plan, stages=STAGES, gpu_counts=GPU_COUNTS) -> str:
    """The per-GPU memory table (GiB), one row per (stage, GPUs), in Markdown."""
    head = ["ZeRO", "GPUs", "weights", "grads", "optimizer", "ZeRO-3 gather", "activations (ckpt / none)", "total",
            "fits (GB cards)"]
    rows = []
    for s in stages:
        for g in gpu_counts:
            e, e_full = plan.at(s, g), plan.at(s, g, checkpointing=not plan.checkpointing)
            ck, full = (e, e_full) if plan.checkpointing else (e_full, e)
            fits = ", ".join(map(str, e.fits())) or "none"
            rows.append([str(s), str(g), *(f"{v / GiB:.1f}" for v in (e.params, e.grads, e.optim, e.workspace)),
                         f"{ck.activations / GiB:.1f} / {full.activations / GiB:.1f}",
                         f"{e.total / GiB:.1f}" + ("" if e.ema == 0 else f" (EMA {e.ema / GiB:.1f})"), fits])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def describe(plan: Plan, cfg: Config) -> str:
    c, t, a = plan.counts, plan.tokens, plan.act
    return (f"flavour {cfg.model.flavour}: {c.frozen / 1e9:.3f}B frozen + {c.trainable / 1e6:.1f}M trainable "
            f"parameters (LoRA rank {cfg.model.lora_rank}, {len(_lora_spec(cfg).targets)} target kinds); "
            f"tokens per sample {t.n} = text {t.text} + target {math.prod(t.target)} + {t.refs} x "
            f"{math.prod(t.ref)} references; batch {t.batch} per GPU; {'bf16' if plan.bf16 else 'fp32'}; "
            f"gradient checkpointing {'on' if plan.checkpointing else 'off'}; saved activations per token and "
            f"block, measured at the tiny width: {a.double:.1f} (double) / {a.single:.1f} (single) x width. "
            f"total = weights + grads + optimizer + gather + activations (+ EMA); a card fits when "
            f"total <= its memory - {RESERVE_GIB:g} GiB.")


def reference_check(cfg: Config) -> str:
    """The estimate for the reference runs' settings (REFERENCE) against their measured peaks."""
    lines = ["| LoRA rank | trainable | estimate (GiB) | measured H100 peak (GiB) | estimate / measured |",
             "|---|---|---|---|---|"]
    for rank, peak in REFERENCE["rank"].items():
        ref = replace(cfg, model=replace(cfg.model, lora_rank=rank, gradient_checkpointing=True),
                      data=replace(cfg.data, target_size=REFERENCE["size"], ref_size=REFERENCE["size"]),
                      train=replace(cfg.train, precision="bf16", batch_size=1, ema_decay=0.0))
        p = make_plan(ref, REFERENCE["refs"])
        e = p.at(REFERENCE["stage"], REFERENCE["gpus"])
        lines.append(f"| {rank} | {p.counts.trainable / 1e6:.0f}M | {e.total / GiB:.1f} | {peak} | "
                     f"{e.total / GiB / peak:.2f} |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML training config (mosaic/config.py), as for `mosaic train`")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set model.lora_rank=128")
    p.add_argument("--refs", type=int, default=4, help="references per sample, K (default 4: the paper's train_k4)")
    p.add_argument("--gpus", type=int, nargs="+", default=list(GPU_COUNTS), help="GPU counts (default 1 2 4 8)")
    p.add_argument("--check", action="store_true",
                   help="also compare with the measured H100 peaks (FLUX.1-dev flavour; rank 16/128/512)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.refs < 0:
        raise ValueError(f"--refs {args.refs}: must be >= 0")
    plan = make_plan(cfg, args.refs)
    print(describe(plan, cfg))
    print()
    print(table(plan, gpu_counts=tuple(args.gpus)))
    if args.check:
        print()
        print("Check against the measured peaks (LoRA on all tokens there, on reference tokens here; "
              f"ZeRO-{REFERENCE['stage']}, {REFERENCE['gpus']} GPU, K={REFERENCE['refs']}, "
              f"{REFERENCE['size']} px, gradient checkpointing):")
        print(reference_check(cfg))
    return 0
