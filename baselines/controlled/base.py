"""What every controlled baseline shares: config overrides on top of MOSAIC's training config,
training through `mosaic.train`, sampling through `mosaic.sample`, and the extension point.

A controlled baseline is MOSAIC's run with a few settings changed (`SETTINGS`, dotted
`key=value` overrides as for `mosaic train --set`, applied after the user's own) and, where the
published method adds modules, inputs or losses, a `model.extension` (an `Extension` subclass)
that the trainer and the sampler call:

    ext = Extension(cfg)                          # cfg: the resolved mosaic.config.Config
    ext.setup(model)                              # attach extra trainable modules to the model
    ext.forward_kwargs(model, batch, prompts, enc) -> dict   # extra model.forward inputs
    ext.attn_hook(batch) -> hook | None           # records attention for its loss
    ext.losses(model, batch, step) -> {name: tensor}         # added to the training loss
    ext.export(model, out_dir) / ext.load(model, run_dir)    # extension.safetensors
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch

EXTENSION_FILE = "extension.safetensors"


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
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(self.state_dict(model), str(tmp))
        os.replace(tmp, path)
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


class ControlledBaseline:
    """A trainable baseline: `train(config, overrides)` then `generate(prompt, references, seed)`."""

    name: ClassVar[str]
    SETTINGS: ClassVar[tuple[str, ...]] = ()  # dotted overrides that define the baseline

    def __init__(self, run: str | os.PathLike | None = None, device: str | None = None):
        self.run = Path(run) if run is not None else None
        self.device = device
        self._sampler = None

    @classmethod
    def config(cls, config: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()):
        """The training config: a YAML file (or defaults), the user's overrides, then `SETTINGS`."""
        from mosaic.config import load_config

        return load_config(config, [*overrides, f"variant={cls.name}", *cls.SETTINGS])

    def train(self, config: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = (), **kwargs):
        """Train through mosaic.train (same trainer, data and budget as MOSAIC); returns its TrainResult."""
        from mosaic.train import train

        cfg = self.config(config, overrides)
        result = train(cfg, **kwargs)
        self.run, self._sampler = Path(cfg.train.output_dir), None
        return result

    def sampler(self):
        from mosaic.sample import Sampler

        if self.run is None:
            raise ValueError(f"{self.name}: no trained run; pass run=<training output folder> or call train() first")
        if self._sampler is None:
            self._sampler = Sampler.from_run(self.run, self.device)
        return self._sampler

    def generate(self, prompt: str, references: list, seed: int, steps: int = 28, guidance: float | None = None,
                 phrases: list[str] | None = None):
        """One image (PIL) from `prompt` and the references (paths or uint8 arrays, prompt order)."""
        from PIL import Image

        img, _ = self.sampler().generate(prompt, references, seed, steps, guidance, phrases)
        return Image.fromarray(img)
