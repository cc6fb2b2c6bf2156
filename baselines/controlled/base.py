"""What every controlled baseline shares: config overrides on top of MOSAIC's training config,
training through `mosaic.train`, sampling through `mosaic.inference.sampler`.

A controlled baseline is MOSAIC's run with a few settings changed (`SETTINGS`, dotted
`key=value` overrides as for `mosaic train --set`, applied after the user's own) and, where the
published method adds modules, inputs or losses, a `model.extension`: a subclass of
mosaic.extension.Extension, the protocol the trainer and the sampler call.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from PIL import Image

from mosaic.config import load_config
from mosaic.inference.sampler import Sampler
from mosaic.train import train

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
        return load_config(config, [*overrides, f"variant={cls.name}", *cls.SETTINGS])

    def train(self, config: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = (), **kwargs):
        """Train through mosaic.train (same trainer, data and budget as MOSAIC); returns its TrainResult."""
        cfg = self.config(config, overrides)
        result = train(cfg, **kwargs)
        self.run, self._sampler = Path(cfg.train.output_dir), None
        return result

    def sampler(self):
        if self.run is None:
            raise ValueError(f"{self.name}: no trained run; pass run=<training output folder> or call train() first")
        if self._sampler is None:
            self._sampler = Sampler.from_run(self.run, self.device)
        return self._sampler

    def generate(self, prompt: str, references: list, seed: int, steps: int = 28, guidance: float | None = None,
                 phrases: list[str] | None = None):
        """One image (PIL) from `prompt` and the references (paths or uint8 arrays, prompt order)."""
        img, _ = self.sampler().generate(prompt, references, seed, steps, guidance, phrases)
        return Image.fromarray(img)
