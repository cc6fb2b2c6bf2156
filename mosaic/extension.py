"""The extension protocol: how a variant (a controlled baseline) hooks into the model step.

Why it exists: a published method that adds modules, inputs or losses to MOSAIC's model (DreamO's
routing loss, XVerse's text modulation) is a `model.extension` = "module:Class" in the config.
The trainer, the sampler and the mechanism evaluation call it through this protocol and never
know which method it is; the implementations live in baselines/controlled.

    ext = Extension(cfg)                          # cfg: the resolved mosaic.config.Config
    ext.setup(model)                              # attach extra trainable modules to the model
    ext.forward_kwargs(model, batch, prompts, enc) -> dict   # extra model.forward inputs
    ext.attn_hook(batch) -> hook | None           # records attention for its loss
    ext.losses(model, batch, step) -> {name: tensor}         # added to the training loss
    ext.export(model, out_dir) / ext.load(model, run_dir)    # the run folder's extension.safetensors
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from .config import Config, ConfigError
from .infra.registry import import_object
from .infra.runfolder import EXTENSION_FILE, atomic_file


class Extension:
    """No-op extension; subclasses override what their method needs. Extra modules live as
    attributes of the model named in `MODULES`, so DeepSpeed trains and checkpoints them."""

    MODULES: ClassVar[tuple[str, ...]] = ()
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg):
        self.cfg = cfg
        args = dict(getattr(cfg.model, "extension_args", None) or {})
        unknown = sorted(set(args) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(f"model.extension_args: unknown key(s) {unknown} for {type(self).__name__}; "
                             f"known: {sorted(self.DEFAULTS)}")
        self.args = {**self.DEFAULTS, **args}

    def setup(self, model) -> None:
        pass

    def forward_kwargs(self, model, batch: dict[str, Any], prompts: list[str], enc) -> dict[str, Any]:
        return {}

    def attn_hook(self, batch: dict[str, Any]):
        return None

    def losses(self, model, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        return {}

    def state_dict(self, model) -> dict[str, torch.Tensor]:
        return {f"{m}.{k}": v.detach().cpu().contiguous() for m in self.MODULES
                for k, v in getattr(model, m).state_dict().items()}

    def export(self, model, out_dir: str | os.PathLike) -> list[Path]:
        """Write the extension's weights to out_dir/extension.safetensors (atomically)."""
        from safetensors.torch import save_file

        path = Path(out_dir) / EXTENSION_FILE
        with atomic_file(path) as tmp:
            save_file(self.state_dict(model), str(tmp))
        return [path]

    def load(self, model, run_dir: str | os.PathLike) -> None:
        from safetensors.torch import load_file

        path = Path(run_dir) / EXTENSION_FILE
        if not self.MODULES:
            return
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the run's extension weights are missing ({type(self).__name__})")
        sd = load_file(str(path))
        for m in self.MODULES:
            prefix = f"{m}."
            getattr(model, m).load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})


def build_extension(cfg: Config):
    """The variant's extension object (model.extension = "module:Class"), or None."""
    if cfg.model.extension is None:
        return None
    try:
        cls = import_object(cfg.model.extension, "model.extension")
    except ValueError as e:
        raise ConfigError(f"model.extension: cannot import {cfg.model.extension!r} ({e})") from None
    return cls(cfg)


def attach_extension(cfg: Config, model, run: Path | None = None):
    """The run's extension set up on `model`, with its trained weights from `run` if given; None if none."""
    ext = build_extension(cfg)
    if ext is not None:
        ext.setup(model)
        if run is not None:
            ext.load(model, run)
    return ext
