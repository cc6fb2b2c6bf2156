"""`mosaic train`: FLUX flow-matching training of the MOSAIC reference LoRA (or of the tiny base).

Why it exists: one trainer for every variant of the ablation, driven by one resolved config
(mosaic.config), running through DeepSpeed so the same code runs one CPU process (gloo, fp32)
or many GPUs (NCCL, bf16) under torchrun or the deepspeed launcher.

Per step: encode target and references with the codec and the prompts with the text encoder;
apply image / text / both dropout; draw t from a logit-normal with FLUX's resolution shift;
x_t = (1 - t) x0 + t noise; the model predicts noise - x0 (MSE). In `lora` mode the attention
probe rides along as the model's attn_hook and L = L_diff + alpha L_SCA + beta(step) L_MD
(mosaic.losses; no probe at all while alpha and beta(step) are 0); in `base` mode the full
transformer learns text-to-image without references. A variant may add modules, forward
inputs, hooks and losses through `model.extension`, and train on a `data.curriculum` of
datasets before data.train.

Exact resume: every random draw of step s (timesteps, noise, dropout, torch's global RNG for
in-model dropout) comes from a generator seeded by (seed, rank, s), and the data order of
epoch e is a permutation seeded by (seed, e); so the step number stored in a checkpoint
restores the RNG streams and the data position exactly, with no RNG state to carry. Model,
optimizer and LR-scheduler state go through `engine.save_checkpoint` / `load_checkpoint`.
A restart with the same output folder resumes from its latest checkpoint and reopens the
same MLflow run. A non-finite loss stops training with an error naming the step, before any
update or checkpoint of the bad state; SIGTERM saves a checkpoint, then exits. Fault injection for
the reliability tests: config train.nan_at_step, and $MOSAIC_FAULT_SIGKILL_AT_STEP (the process
kills itself after that step, as a pre-emption without warning would).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .config import Config, ConfigError, dump_yaml, flatten, load_config

CHECKPOINTS = "checkpoints"
LATEST = "latest"
LORA_FILE = "lora.safetensors"
BASE_DIR = "transformer"
METRICS_FILE = "mechanism.json"
INPUTS_FILE = "inputs.sha256"  # reset_stale_output
KILL_AT_STEP_ENV = "MOSAIC_FAULT_SIGKILL_AT_STEP"  # fault injection (tests/reliability): SIGKILL after step n


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. a non-finite loss); the message names the step."""


@dataclass
class TrainResult:
    status: str  # "finished" or "interrupted" (stopped early, checkpoint saved)
    step: int
    output: Path | None  # the exported LoRA file or base transformer folder (finished runs)
    run_id: str | None = None
    mechanism: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML training config (see mosaic/config.py)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=10 (repeatable; values parsed as YAML)")


def run(args: argparse.Namespace) -> int:
    result = train(load_config(args.config, args.overrides))
    return 0 if result.status == "finished" else 143


# ---------------------------------------------------------------- randomness

def step_generator(seed: int, *stream: int) -> torch.Generator:
    """A CPU generator determined by (seed, *stream) alone, e.g. (seed, rank, step)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0]))


def sample_timesteps(n: int, n_tokens: int, cfg: Config, g: torch.Generator) -> torch.Tensor:
    """t in (0, 1): sigmoid(N(mean, std)) (SD3/FLUX logit-normal), then FLUX's resolution shift.

    The shift is the one FLUX sampling uses: mu grows linearly with the image token count
    (diffusers `calculate_shift`) and t' = e^mu / (e^mu + 1/t - 1).
    """
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from diffusers.training_utils import compute_density_for_timestep_sampling

    t = compute_density_for_timestep_sampling("logit_normal", n, cfg.train.logit_mean, cfg.train.logit_std,
                                              generator=g)
    if cfg.train.resolution_shift:
        mu = calculate_shift(n_tokens)
        t = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    return t


def apply_dropout(batch: dict[str, Any], cfg: Config, g: torch.Generator) -> tuple[dict[str, Any], list[str]]:
    """Per sample: drop both (p_both), else the references (p_image), else the prompt (p_text).

    Dropped references are masked out (`ref_mask`, `point_mask`), so they neither condition
    the target nor enter SCAL/MDL; a dropped prompt becomes "".
    """
    tc = cfg.train
    u = torch.rand(len(batch["prompt"]), generator=g)
    both = u < tc.drop_both
    image = both | ((u >= tc.drop_both) & (u < tc.drop_both + tc.drop_image))
    text = both | ((u >= tc.drop_both + tc.drop_image) & (u < tc.drop_both + tc.drop_image + tc.drop_text))
    batch = dict(batch, ref_mask=batch["ref_mask"] & ~image[:, None],
                 point_mask=batch["point_mask"] & ~image[:, None, None])
    return batch, ["" if d else p for p, d in zip(batch["prompt"], text.tolist())]


# ---------------------------------------------------------------- setup

def setup_distributed() -> tuple[torch.device, int, int]:
    """(device, rank, world size). A process not started by a launcher becomes a world of one."""
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        # Single process (no launcher: torchrun and the deepspeed launcher set MASTER_ADDR): no rendezvous
        # port needed. RANK alone may be left over from an earlier in-process run and inherited.
        if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
            for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
                os.environ.setdefault(k, v)
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            deepspeed.init_distributed(dist_backend=backend)
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    return torch.device(f"cuda:{local}" if cuda else "cpu"), dist.get_rank(), dist.get_world_size()


def deepspeed_config(cfg: Config, bf16: bool) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def build_components(cfg: Config, device: torch.device):
    """(model, codec, text encoder) for the config's flavour; model on `device`, fp32 master weights."""
    from .model import LoraSpec, build_codec, build_model, build_text_encoder, get_flavour

    mc = cfg.model
    lora = None
    if cfg.train.mode == "lora":
        kw = {"targets": tuple(mc.lora_targets)} if mc.lora_targets is not None else {}
        lora = LoraSpec(rank=mc.lora_rank, alpha=mc.lora_alpha, dropout=mc.lora_dropout, **kw)
    torch.manual_seed(cfg.train.seed)  # the LoRA's initial A matrices come from the global RNG
    model = build_model(mc.flavour, weights=mc.weights, lora=lora, pos_scheme=mc.pos_scheme, max_refs=mc.max_refs,
                        gradient_checkpointing=mc.gradient_checkpointing, seed=cfg.train.seed, device=device)
    # only the weighted encoders live on a device (see /tmp/core_requests.md: a uniform device argument)
    text_kw = {"device": device} if get_flavour(mc.flavour).text["kind"] == "t5-clip" else {}
    codec = build_codec(mc.flavour, mc.weights)
    if getattr(codec, "vae", None) is not None:
        codec.vae.to(device)
    return model, codec, build_text_encoder(mc.flavour, mc.weights, **text_kw)


def load_dataset(root: str, cfg: Config, codec, max_refs: int, max_k: int | None = None):
    """The dataset (only its samples with k <= max_k if given), checked up front against the model's
    reference limit (from the manifest)."""
    from .data.dataset import MultiSubjectDataset, TokenSpec
    from .data.sample import DataError

    spec = TokenSpec((cfg.data.target_size,) * 2, (cfg.data.ref_size,) * 2, codec.downsample, codec.patch)
    ds = MultiSubjectDataset(root, spec, strict=cfg.data.strict, max_k=max_refs)
    if max_k is not None:
        ds.records = [r for r in ds.records if int(r["k"]) <= max_k]
        if not ds.records:
            raise DataError(f"{Path(root) / 'manifest.jsonl'}: no sample with k <= {max_k} (data.curriculum max_k)")
    too_many = [r for r in ds.records if int(r["k"]) > max_refs]
    if too_many:
        raise DataError(f"{Path(root) / 'manifest.jsonl'}: sample {too_many[0]['id']} field k = {too_many[0]['k']} "
                        f"exceeds the model's limit of {max_refs} references ({len(too_many)} such samples); "
                        f"raise model.max_refs or filter the dataset")
    return ds


class Batches:
    """Batch `step` of the run is a pure function of (seed, step): epoch e visits a (seed, e)-seeded
    permutation of the samples (DistributedSampler, this rank's shard), in full batches only."""

    def __init__(self, dataset, cfg: Config, rank: int, world: int):
        from torch.utils.data import DistributedSampler

        self.dataset, self.cfg = dataset, cfg
        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed,
                                          drop_last=True)
        self.per_epoch = len(self.sampler) // cfg.train.batch_size
        if self.per_epoch == 0:
            raise ValueError(f"{dataset.root}: {len(dataset)} samples are fewer than train.batch_size "
                             f"({cfg.train.batch_size}) x {world} processes")

    def from_step(self, step: int):
        from torch.utils.data import DataLoader

        from .data.dataset import collate

        bs = self.cfg.train.batch_size
        epoch, skip = divmod(step, self.per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)[skip * bs: self.per_epoch * bs]
            yield from DataLoader(self.dataset, batch_size=bs, sampler=order, collate_fn=collate,
                                  num_workers=self.cfg.data.num_workers)
            epoch, skip = epoch + 1, 0


def data_stages(cfg: Config, codec, max_refs: int, rank: int, world: int) -> list[tuple[int, Batches]]:
    """(first step, batches) of each curriculum stage, then of data.train (all loaded and checked now)."""
    stages, start = [], 0
    for st in cfg.data.curriculum:
        stages.append((start, Batches(load_dataset(st.train, cfg, codec, max_refs, st.max_k), cfg, rank, world)))
        start += st.steps
    return stages + [(start, Batches(load_dataset(cfg.data.train, cfg, codec, max_refs), cfg, rank, world))]


def batch_stream(stages: list[tuple[int, Batches]], step: int, total: int):
    """The batches of steps step..total-1; a stage's batch s is its own batch s - start, so resume is exact."""
    ends = [start for start, _ in stages[1:]] + [total]
    for (start, batches), end in zip(stages, ends):
        if step < end:
            it = batches.from_step(max(step, start) - start)
            for _ in range(max(step, start), end):
                yield next(it)


def load_extension(cfg: Config):
    """The variant's extension object (model.extension = "module:Class"), or None."""
    if cfg.model.extension is None:
        return None
    module, _, name = cfg.model.extension.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"model.extension: cannot import {cfg.model.extension!r} ({e})") from None
    return cls(cfg)


# ---------------------------------------------------------------- the objective

@dataclass
class Encoded:
    """A batch at token level, on the model's device and dtype."""

    x0: torch.Tensor  # [B, Nt, C]
    refs: torch.Tensor | None  # [B, K, Nr, C]
    ref_mask: torch.Tensor | None  # [B, K]
    text: torch.Tensor
    pooled: torch.Tensor
    target_grid: tuple[int, int]
    ref_grid: tuple[int, int] | None


@torch.no_grad()
def encode_batch(batch: dict[str, Any], prompts: list[str], codec, text_encoder, device, dtype,
                 with_refs: bool) -> Encoded:
    target = batch["target"].to(device)
    x0 = codec.encode(target).to(dtype)
    refs = ref_mask = ref_grid = None
    if with_refs:
        b, k = batch["ref_mask"].shape
        r = batch["refs"].to(device)
        refs = codec.encode(r.flatten(0, 1)).unflatten(0, (b, k)).to(dtype)
        ref_mask, ref_grid = batch["ref_mask"].to(device), codec.grid(*r.shape[-2:])
    text, pooled = text_encoder.encode(prompts)
    return Encoded(x0, refs, ref_mask, text.to(device, dtype), pooled.to(device, dtype),
                   codec.grid(*target.shape[-2:]), ref_grid)


def guidance_for(model, n: int, cfg: Config, device) -> torch.Tensor | None:
    if not model.transformer.config.guidance_embeds:
        return None
    return torch.full((n,), cfg.train.guidance, device=device)


def noised(enc: Encoded, cfg: Config, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, target velocity noise - x0) for one batch, from generator `g`."""
    t = sample_timesteps(enc.x0.shape[0], enc.x0.shape[1], cfg, g)
    noise = torch.randn(enc.x0.shape, generator=g).to(enc.x0)
    t = t.to(enc.x0)
    return (1 - t[:, None, None]) * enc.x0 + t[:, None, None] * noise, t, noise - enc.x0


def combine_hooks(*hooks):
    """One attn_hook calling each of `hooks` that is not None (None when there is none)."""
    hooks = [h for h in hooks if h is not None]
    if len(hooks) < 2:
        return hooks[0] if hooks else None
    return lambda i, q, k, layout: [h(i, q, k, layout) for h in hooks]


def forward_losses(engine, enc: Encoded, batch: dict[str, Any], prompts: list[str], cfg: Config, step: int,
                   g: torch.Generator, ext=None) -> dict[str, torch.Tensor]:
    """{"total", "diff"}, plus {"scal", "mdl", "beta"} when SCAL or MDL is on, plus the extension's losses."""
    from .losses import AttentionProbe, correspondence_losses

    xt, t, velocity = noised(enc, cfg, g)
    probe = None
    if enc.refs is not None and (cfg.loss.alpha > 0 or cfg.loss.beta_at(step) > 0):
        probe = AttentionProbe(cfg.loss, batch)
    kwargs = ext.forward_kwargs(engine.module, batch, prompts, enc) if ext else {}
    pred = engine(xt, enc.refs, enc.ref_mask, enc.text, enc.pooled, t,
                  guidance_for(engine.module, len(t), cfg, xt.device), target_grid=enc.target_grid,
                  ref_grid=enc.ref_grid, attn_hook=combine_hooks(probe, ext.attn_hook(batch) if ext else None),
                  **kwargs)
    out = {"diff": F.mse_loss(pred.float(), velocity.float())}
    total = out["diff"]
    if probe is not None:
        corr = correspondence_losses(probe, batch, step)
        out.update(scal=corr["scal"], mdl=corr["mdl"], beta=torch.tensor(corr["beta"]))
        total = total + corr["loss"]
    for name, value in (ext.losses(engine.module, batch, step) if ext else {}).items():
        if name in out or name == "total":
            raise ValueError(f"model.extension {cfg.model.extension}: its loss {name!r} clashes with a trainer loss")
        out[name] = value
        total = total + value
    out["total"] = total
    return out


# ---------------------------------------------------------------- checkpoints

def latest_checkpoint(output_dir: Path) -> str | None:
    path = output_dir / CHECKPOINTS / LATEST
    return path.read_text().strip() if path.exists() else None


def save_checkpoint(engine, output_dir: Path, step: int, client_state: dict[str, Any], keep: int, rank: int,
                    frozen_excluded: bool) -> None:
    """DeepSpeed checkpoint `step_<n>`; the `latest` pointer is replaced atomically once every file is written,
    so a kill during the save leaves the previous checkpoint as the latest."""
    ckpt = output_dir / CHECKPOINTS
    tag = f"step_{step:08d}"
    tmp = ckpt / f".{LATEST}.tmp"
    try:
        engine.save_checkpoint(str(ckpt), tag=tag, client_state=client_state, save_latest=False,
                               exclude_frozen_parameters=frozen_excluded)
        if rank == 0:
            tmp.write_text(tag)
            os.replace(tmp, ckpt / LATEST)
    except (OSError, RuntimeError) as e:  # e.g. a full disk (torch.save reports it as a RuntimeError)
        if rank == 0:
            shutil.rmtree(ckpt / tag, ignore_errors=True)
            tmp.unlink(missing_ok=True)
        raise TrainingError(f"step {step}: writing checkpoint {ckpt / tag} failed ({str(e).strip()[:300]}); "
                            f"the previous checkpoint is intact: {latest_checkpoint(output_dir) or 'none'}") from e
    if rank == 0:
        for old in sorted(p for p in ckpt.iterdir() if p.is_dir() and p.name.startswith("step_"))[:-keep]:
            shutil.rmtree(old)
    dist.barrier()


def check_finite_parameters(params, step: int, output_dir: Path) -> None:
    bad = sum(int(not torch.isfinite(p).all()) for p in params)
    if bad:
        raise TrainingError(f"step {step}: {bad} trainable tensors hold NaN/inf after the update; no checkpoint "
                            f"written; last good checkpoint: {latest_checkpoint(output_dir) or 'none'} in "
                            f"{output_dir / CHECKPOINTS}")


# ---------------------------------------------------------------- the run

def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _run_config(source: Path | Config) -> dict[str, Any]:
    """A config (or the one saved at a path) without the keys that may change on resume (tracking, the
    after-training evaluation)."""
    cfg = load_config(source) if isinstance(source, Path) else source
    return {k: v for k, v in flatten(cfg).items() if not k.startswith(("tracking.", "eval."))}


def checkpoint_step(output_dir: Path) -> int | None:
    """The step of the latest checkpoint (from its tag `step_<n>`), or None."""
    tag = latest_checkpoint(output_dir)
    return int(tag.removeprefix("step_")) if tag else None


def digest_inputs(paths: list[Path]) -> str:
    """A sha256 naming what a job read: a file's content (markers, configs), a folder's listing (each file's
    relative path, size and mtime), so regenerated data or retrained weights change it."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        h.update(f"{path}\0".encode())
        if path.is_file():
            h.update(path.read_bytes())
        elif path.is_dir():
            for f in sorted(q for q in path.rglob("*") if q.is_file()):
                st = f.stat()
                h.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        else:
            raise FileNotFoundError(f"{path}: input of the training not found")
    return h.hexdigest()


def reset_stale_output(out: Path, cfg: Config, inputs: str) -> str | None:
    """For a scheduler that reruns a job whose output it deleted (the workflow): keep the run folder only
    when it holds an unfinished run of the same config and the same inputs (`inputs`: a digest of the
    data and weights the job reads), so a pre-empted job resumes; otherwise empty it, so the rerun starts
    afresh (a finished run rerun on purpose, a changed config or changed inputs). Writes `inputs` into
    the folder; returns why it was emptied, or None."""
    saved, digest = out / "config.yaml", out / INPUTS_FILE
    reason = None
    if out.exists() and any(out.iterdir()):
        step = checkpoint_step(out)
        if not saved.is_file() or _run_config(saved) != _run_config(cfg):
            reason = f"{saved}: the config changed"
        elif not digest.is_file() or digest.read_text().strip() != inputs:
            reason = f"{digest}: the inputs changed"
        elif step is not None and step >= cfg.train.steps and any((out / f).exists() for f in (LORA_FILE, BASE_DIR)):
            reason = f"{out}: its run had finished (exported at step {step}); rerun on request"
        if reason:
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(digest, inputs + "\n")
    return reason


def prepare_output(out: Path, cfg: Config) -> None:
    """Resume or start afresh, then write the resolved config.

    The folder's saved config decides: the same config resumes (latest checkpoint, same MLflow
    run); a different one is an error if the folder holds a checkpoint of that other run, and
    otherwise (it never reached a checkpoint) starts afresh with a new MLflow run.
    """
    from .tracking import RUN_ID_FILE

    saved = out / "config.yaml"
    if saved.exists():
        old, new = _run_config(saved), _run_config(cfg)
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if diff and latest_checkpoint(out) is not None:
            raise ConfigError(f"{saved}: the output folder holds checkpoints of a run with a different config "
                              f"({', '.join(diff)}); use another train.output_dir or delete {out}")
        if diff:
            (out / RUN_ID_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(saved, dump_yaml(cfg))


class _StopFlag:
    """Set by SIGTERM (pre-emption): the loop checkpoints and returns at the next step boundary."""

    def __init__(self):
        self.set = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "set", True))
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def train(cfg: Config, stop_after: int | None = None) -> TrainResult:
    """Train (or resume) the run in `cfg.train.output_dir`. `stop_after=n` stops after step n with a
    checkpoint, as a pre-emption would (tests); the same call again resumes from there."""
    import deepspeed
    from tqdm import tqdm

    from . import mechanism
    from .model.weights import locate

    out = Path(cfg.train.output_dir)
    lora_mode = cfg.train.mode == "lora"
    if cfg.model.weights is not None:
        locate(cfg.model.weights, "transformer")  # a missing path fails here, naming it, before any setup
    device, rank, world = setup_distributed()
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    model, codec, text_encoder = build_components(cfg, device)
    ext = load_extension(cfg)
    if ext is not None:
        ext.setup(model)  # may attach trainable modules: before the optimizer sees the parameters
    stages = data_stages(cfg, codec, model.max_refs, rank, world)
    val = None  # read now, so a bad val split fails before training rather than after
    if lora_mode and cfg.data.val and cfg.eval.enabled:
        val = load_dataset(cfg.data.val, cfg, codec, model.max_refs)
    if rank == 0:
        prepare_output(out, cfg)
    dist.barrier()
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    warmup = cfg.train.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=deepspeed_config(cfg, bf16))
    dtype = torch.bfloat16 if bf16 else torch.float32
    ema = None
    if cfg.train.ema_decay > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=cfg.train.ema_decay)

    step = 0
    if latest_checkpoint(out) is not None:
        _, client = engine.load_checkpoint(str(out / CHECKPOINTS), load_module_strict=not lora_mode)
        step = int(client["step"])
        if ema is not None:
            ema.load_state_dict(client["ema"])

    logger = start_logger(cfg, out, step, world, device, bf16) if rank == 0 and cfg.tracking.enabled else None

    def checkpoint(at: int) -> None:
        check_finite_parameters(params, at, out)
        state = {"step": at, **({"ema": ema.state_dict()} if ema is not None else {})}
        save_checkpoint(engine, out, at, state, cfg.train.keep_checkpoints, rank, frozen_excluded=lora_mode)
        if logger:
            logger.flush()

    status, saved_at = "finished", step
    bar = tqdm(total=cfg.train.steps, initial=step, disable=rank != 0, desc=cfg.variant, dynamic_ncols=True,
               mininterval=1.0)
    data = batch_stream(stages, step, cfg.train.steps)
    kill_at = int(os.environ.get(KILL_AT_STEP_ENV, 0)) or None
    try:
        with _StopFlag() as stop:
            engine.train()
            while step < cfg.train.steps:
                t0 = time.perf_counter()
                g = step_generator(cfg.train.seed, rank, step)
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)))  # in-model randomness (LoRA dropout)
                batch, prompts = apply_dropout(next(data), cfg, g)
                enc = encode_batch(batch, prompts, codec, text_encoder, device, dtype, with_refs=lora_mode)
                losses = forward_losses(engine, enc, batch, prompts, cfg, step, g, ext)
                if cfg.train.nan_at_step == step + 1:  # fault injection
                    losses["total"] = losses["total"] * float("nan")
                # one collective per step: any rank's non-finite loss, or SIGTERM
                flags = torch.tensor([float(not torch.isfinite(losses["total"])), float(stop.set)], device=device)
                dist.all_reduce(flags)
                bad, stopping = flags.tolist()
                if bad:
                    vals = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                    raise TrainingError(f"step {step + 1}: non-finite loss ({vals}); stopped before the update; "
                                        f"last good checkpoint: {latest_checkpoint(out) or 'none'} in "
                                        f"{out / CHECKPOINTS}")
                lr = scheduler.get_last_lr()[0]
                engine.backward(losses["total"])
                engine.step()
                if ema is not None:
                    ema.step(params)
                step += 1
                if logger:
                    m = {k if k == "beta" else f"loss/{k}": v.item() for k, v in losses.items()}
                    logger.log_metrics({**m, "lr": lr, "step_time": time.perf_counter() - t0}, step)
                    if step % cfg.tracking.log_every == 0:
                        logger.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{losses['total'].item():.4f}", diff=f"{losses['diff'].item():.4f}")
                if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                    checkpoint(step)
                    saved_at = step
                if step == kill_at:  # fault injection: a pre-emption that gives no warning
                    os.kill(os.getpid(), signal.SIGKILL)
                if step < cfg.train.steps and (stopping or step == stop_after):
                    status = "interrupted"
                    break
        if saved_at != step:
            checkpoint(step)
        if status == "interrupted":
            if logger:
                logger.end("KILLED")
            return TrainResult(status, step, None, logger.run_id if logger else None)
        output, results = None, {}
        if rank == 0:
            output, *extra = export(engine.module, ema, params, out, lora_mode, ext)
            if logger:
                logger.set_tag("output", str(output.resolve()))
                for path in ([output] if lora_mode else []) + extra:
                    logger.log_artifact(path)
            if val is not None:
                results = mechanism.evaluate_run(engine.module, codec, text_encoder, val, cfg, device, dtype, out,
                                                 logger, ext)
            if logger:
                truncated = getattr(text_encoder, "truncated", None)  # prompts longer than the text encoder keeps
                if truncated is not None:
                    logger.log_metrics({"data/prompts_truncated": float(truncated)}, step)
                logger.end("FINISHED")
        dist.barrier()
        return TrainResult(status, step, output, logger.run_id if logger else None, results)
    except BaseException:
        if logger:
            with contextlib.suppress(Exception):  # a logging failure must not hide the training error
                logger.end("FAILED")
        raise
    finally:
        bar.close()


def start_logger(cfg: Config, out: Path, step: int, world: int, device: torch.device, bf16: bool):
    """The run's MLflow logger: a new run with every resolved config value as a param, or the stored one."""
    from . import tracking

    logger = tracking.RunLogger(tracking.resolve_tracking_uri(cfg.tracking.tracking_uri, out),
                                cfg.tracking.experiment, out)
    tags = {"variant": cfg.variant, "profile": cfg.profile, "mode": cfg.train.mode, "flavour": cfg.model.flavour,
            "seed": str(cfg.train.seed), "world_size": str(world),
            "device": device.type, "precision": "bf16" if bf16 else "fp32",
            **tracking.provenance()}
    logger.start(cfg.tracking.run_name or cfg.variant, flatten(cfg), tags, step)
    logger.log_artifact(out / "config.yaml")
    return logger


def export(model, ema, params, out: Path, lora_mode: bool, ext=None) -> list[Path]:
    """The final weights (EMA weights when EMA is on): the LoRA safetensors or the base transformer folder,
    then the extension's files."""
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        paths = [model.save_lora(out / LORA_FILE) if lora_mode else model.save_base(out / BASE_DIR)]
        return paths + (list(ext.export(model, out)) if ext is not None else [])
    except Exception as e:  # e.g. a full disk (OSError, or safetensors' own error); no partial file is left
        raise TrainingError(f"{out / (LORA_FILE if lora_mode else BASE_DIR)}: exporting the trained weights failed "
                            f"({str(e).strip()[:300]}); the final checkpoint {latest_checkpoint(out)} is intact: "
                            f"rerun with the same output folder to export it") from e
    finally:
        if ema is not None:
            ema.restore(params)
