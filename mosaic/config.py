"""The resolved training configuration: one dataclass tree, read from YAML and validated.

Why it exists: a run is described by one YAML file (plus `--set key=value` overrides) and
every value it resolves to is logged as an MLflow param, so a run can be reproduced from
its params alone. Validation happens once, here, with errors that name the file and the
dotted key: an unknown key, a value of the wrong type, or an out-of-range value (for
example a negative `loss.alpha`) never reaches the trainer.

Relative paths are kept as written and resolved against the working directory, as
Snakemake and the command line both run from the project root.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .losses import LossConfig


class ConfigError(ValueError):
    """A bad configuration value; the message names the source and the dotted key."""


@dataclass
class ModelConfig:
    flavour: str = "tiny"  # a name in mosaic.model.flavours.FLAVOURS
    weights: str | None = None  # diffusers transformer folder (or HF id for flux-dev); None = random init
    pos_scheme: Literal["left", "diagonal"] = "left"
    max_refs: int | None = None  # the model's reference limit (None: the flavour's); a sample with more is an error
    lora_rank: int = 16
    lora_alpha: float | None = None  # None: = rank (scale 1)
    lora_targets: list[str] | None = None  # None: the upstream MOSAIC target modules (mosaic.model.lora)
    lora_dropout: float = 0.0
    # the LoRA's initial A: "gaussian" N(0, 1/rank) as upstream MOSAIC / OminiControl (peft init_lora_weights=
    # "gaussian"); "kaiming": peft's default kaiming-uniform (init_lora_weights=True)
    lora_init: Literal["gaussian", "kaiming"] = "gaussian"
    # the guidance embedding of the reference tokens' timestep-0 modulation: 1.0 as upstream gives the reference
    # branch in training and at sampling (flux_omini.generate); None: the target's guidance (3.5 at flux-dev sampling)
    ref_guidance: float | None = 1.0
    # VAE posterior: "upstream" as MOSAIC's code: training target sample(), training references mode(), sampled
    # references sample() (flux_omini.encode_images); "mode": the posterior mode everywhere
    vae_posterior: Literal["upstream", "mode"] = "upstream"
    gradient_checkpointing: bool = False
    # "module:Class" adding modules, forward inputs or losses to a variant (the protocol: mosaic.extension);
    # its hyper-parameters go in extension_args
    extension: str | None = None
    extension_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataStage:
    """A curriculum stage: `steps` steps on dataset `train`, optionally only its samples with k <= max_k."""

    train: str
    steps: int
    max_k: int | None = None

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps = {self.steps}: must be >= 1")
        if self.max_k is not None and self.max_k < 1:
            raise ValueError(f"max_k = {self.max_k}: must be >= 1")


@dataclass
class DataConfig:
    train: str = ""  # dataset folder written by mosaic.data.records.DatasetWriter
    val: str | None = None  # used for the attention figure and the mechanism evaluation
    target_size: int = 96
    ref_size: int = 48
    strict: bool = False  # strict correspondence ownership (raise on conflicts)
    num_workers: int = 0
    curriculum: list[DataStage] = field(default_factory=list)  # stages first, then `train` for the remaining steps


@dataclass
class TrainConfig:
    mode: Literal["lora", "base"] = "lora"  # lora: MOSAIC reference LoRA; base: full text-to-image transformer
    output_dir: str = "runs/default"
    steps: int = 100
    batch_size: int = 1  # per process
    lr: float = 8e-5  # upstream train.sh
    weight_decay: float = 1e-2  # upstream train.sh (AdamW)
    warmup_steps: int = 0
    grad_clip: float = 1.0  # 0 disables clipping
    zero_stage: int = 2  # DeepSpeed ZeRO 0-3; 3 also partitions the (frozen) weights, gathered for export
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    seed: int = 0
    checkpoint_every: int = 50  # 0: only the final checkpoint
    keep_checkpoints: int = 2  # older checkpoint folders are deleted
    ema_decay: float = 0.99  # upstream train.sh --ema (0.99); 0 disables EMA; else lora.safetensors holds the EMA
    # weights and lora_raw.safetensors the trained ones (upstream exports both)
    # "upstream": constant decay, the average taken before each update from the initial weights (MOSAIC train.py);
    # "diffusers": diffusers EMAModel's (1 + n) / (10 + n) warm-up, after each update
    ema_rule: Literal["upstream", "diffusers"] = "upstream"
    drop_image: float = 0.05  # probability of dropping all references of a sample (upstream i_drop_rate)
    drop_text: float = 0.05  # probability of replacing the prompt by "" (upstream t_drop_rate)
    drop_both: float = 0.05  # probability of both at once (upstream ti_drop_rate)
    # a dropped reference: "zero": its latents zeroed, kept as tokens (upstream); "mask": masked out (ref_mask)
    drop_image_mode: Literal["zero", "mask"] = "zero"
    logit_mean: float = 0.0  # timestep density: sigmoid(N(logit_mean, logit_std))
    logit_std: float = 1.0
    resolution_shift: bool = True  # FLUX's sequence-length dependent timestep shift
    guidance: float = 1.0  # guidance embedding value for guidance-distilled flavours
    nan_at_step: int | None = None  # fault injection: the loss at this step becomes NaN
    allow_inactive_mdl: bool = False  # accept loss.beta > 0 on data where no sample can give MDL a value

    def __post_init__(self):
        total = self.drop_image + self.drop_text + self.drop_both
        if total > 1:
            raise ValueError(f"train.drop_*: drop_image + drop_text + drop_both = {total:g} sum to more than 1")


@dataclass
class TrackingConfig:
    enabled: bool = True
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db
    experiment: str = "mosaic"
    run_name: str | None = None
    log_every: int = 10  # metrics are buffered and written every N steps and at checkpoints


@dataclass
class EvalConfig:
    enabled: bool = True  # mechanism evaluation on data.val after training
    max_samples: int | None = None  # None: the whole val split
    timesteps: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    figure_samples: int = 3  # validation samples drawn in the attention figure


@dataclass
class Config:
    variant: str = "default"  # e.g. none / scal / mdl / both; an MLflow tag
    profile: str = "tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        staged = sum(s.steps for s in self.data.curriculum)
        if staged > self.train.steps:
            raise ValueError(f"data.curriculum: the stages cover {staged} steps, more than train.steps = "
                             f"{self.train.steps}")


# Range checks: dotted key -> (predicate, what it must be).
_CHECKS: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "model.max_refs": (lambda v: v >= 1, ">= 1"),
    "model.lora_rank": (lambda v: v >= 1, ">= 1"),
    "model.lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "model.ref_guidance": (lambda v: v > 0, "> 0 (or null: the target's guidance)"),
    "data.train": (lambda v: bool(v), "a dataset folder"),
    "data.target_size": (lambda v: v > 0, "> 0"),
    "data.ref_size": (lambda v: v > 0, "> 0"),
    "data.num_workers": (lambda v: v >= 0, ">= 0"),
    "train.steps": (lambda v: v >= 1, ">= 1"),
    "train.batch_size": (lambda v: v >= 1, ">= 1"),
    "train.lr": (lambda v: v > 0, "> 0"),
    "train.weight_decay": (lambda v: v >= 0, ">= 0"),
    "train.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "train.grad_clip": (lambda v: v >= 0, ">= 0"),
    "train.zero_stage": (lambda v: v in (0, 1, 2, 3), "0, 1, 2 or 3"),
    "train.checkpoint_every": (lambda v: v >= 0, ">= 0"),
    "train.keep_checkpoints": (lambda v: v >= 1, ">= 1"),
    "train.ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.drop_image": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.drop_text": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.drop_both": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "train.logit_std": (lambda v: v > 0, "> 0"),
    "tracking.log_every": (lambda v: v >= 1, ">= 1"),
    "eval.timesteps": (lambda v: len(v) > 0 and all(0 < t < 1 for t in v), "a non-empty list of values in (0, 1)"),
    "eval.figure_samples": (lambda v: v >= 0, ">= 0"),
}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (lists -> tuples where typed so)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is dict:  # a free mapping (extension_args), kept as given
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: expected a mapping with string keys, got {type(value).__name__} {value!r}")
        return dict(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        items = [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
        return tuple(items) if origin is tuple else items
    if tp is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-4 as a string; "abc" still fails below
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"{key}: unsupported annotation {tp!r}")  # a programming error, not a user error


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init} | ({"preset"} if cls is LossConfig else set())
    for k in values:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else k
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    base = None  # loss.preset: start from the named preset, then apply explicit keys
    if cls is LossConfig and values.get("preset") is not None:
        try:
            base = LossConfig.preset(values["preset"])
        except ValueError as e:  # names loss.preset itself
            raise ConfigError(str(e)) from None
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in values:
            v = _coerce(values[f.name], hints[f.name], key)
        elif base is not None:
            v = getattr(base, f.name)
        elif f.default is not dataclasses.MISSING:
            v = f.default
        elif f.default_factory is not dataclasses.MISSING:
            v = f.default_factory()
        else:
            raise ConfigError(f"{key}: required")
        if key in _CHECKS and v is not None and not _CHECKS[key][0](v):
            raise ConfigError(f"{key}: {v!r} must be {_CHECKS[key][1]}")
        kwargs[f.name] = v
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # the section's own validation (LossConfig names its keys)
        msg = str(e)
        raise ConfigError(msg if not prefix or msg.startswith(f"{prefix}.") else f"{prefix}: {msg}") from None


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {p} is not a section")
    node[last] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["train.steps=10", "loss.blocks=[0, 1]"]` -> nested dict; values are parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        _set(tree, key.strip(), yaml.safe_load(raw))
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def from_dict(values: dict[str, Any], source: str = "config") -> Config:
    """Validate a nested dict; errors are prefixed with `source` (the file name)."""
    try:
        return _build(Config, values, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Read a YAML file (or only defaults when `path` is None), apply overrides, validate."""
    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    if overrides:
        if isinstance(overrides, list):
            overrides = parse_overrides(overrides)
        values = _merge(values, overrides)
        source += " (with overrides)"
    return from_dict(values, source)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(cfg: Config) -> dict[str, Any]:
    """Every resolved value under its dotted key (lists and tuples as JSON), e.g. for MLflow params."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                out[key] = json.dumps(list(v)) if isinstance(v, (list, tuple)) else v
    tree = to_dict(cfg)
    tree["loss"] = cfg.loss.to_params()  # the losses' own spelling of their switches
    walk(tree, "")
    return out


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML; `load_config` on it gives back an equal Config."""
    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return yaml.safe_dump(plain(to_dict(cfg)), sort_keys=False)
