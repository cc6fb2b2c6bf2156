"""Shared plumbing of the official-release adapters: find the upstream code and weights, or say
exactly what is missing.

Each adapter runs the published pipeline in its own conda environment (`workflow/envs/<name>.yaml`,
used by Snakemake's `conda:`), because the upstream pins conflict with this project's and with
each other (diffusers 0.30 / 0.32 / 0.33, transformers 4.43 - 4.49). The adapters need a CUDA GPU
and the upstream weights; here neither exists, so constructing one raises `OfficialUnavailable`
naming the environment file, the install command and every missing weight with where it goes.
This module imports only the standard library, numpy, torch and PIL, which every upstream
environment has (the project is installed there with `pip install --no-deps -e .`).
"""
from __future__ import annotations

import importlib
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

PROJECT = Path(__file__).resolve().parents[2]


class OfficialUnavailable(RuntimeError):
    """The official release cannot run: its code, weights or GPU are missing (the message says which)."""


@contextmanager
def working_dir(path: Path):
    """Run upstream code that opens files relative to its checkout (Python 3.10 has no contextlib.chdir)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def hf_cached(repo_id: str, filename: str) -> bool:
    """Is repo_id/filename in the local Hugging Face cache ($HF_HOME)?"""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo_id, filename), str)


def to_pil(image):
    """A reference given as a path, a uint8 array or a PIL image -> RGB PIL image."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            return im.convert("RGB")
    return image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))


class OfficialBaseline:
    """Construct -> checks code, weights and GPU, then loads the pipeline; `generate` -> PIL image."""

    name: ClassVar[str]
    MODULE: ClassVar[str]  # upstream module imported to prove the code is there
    REPO_VAR: ClassVar[str | None] = None  # env var naming the upstream checkout (code that is not a package)
    INSTALL: ClassVar[str]  # how to get the code
    DEFAULTS: ClassVar[dict[str, Any]]  # the published default settings
    PROTOCOL: ClassVar[dict[str, Any]] = {}  # published evaluation protocol values that are not call settings

    def __init__(self, repo: str | os.PathLike | None = None, device: str = "cuda", **settings):
        unknown = sorted(set(settings) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(f"{self.name}: unknown setting(s) {unknown}; known: {sorted(self.DEFAULTS)}")
        self.settings = {**self.DEFAULTS, **settings}
        self.device = device
        repo = repo or (os.environ.get(self.REPO_VAR) if self.REPO_VAR else None)
        self.repo = Path(repo).resolve() if repo else None
        self._require_code()
        missing = self.missing_weights()
        if missing:
            raise OfficialUnavailable(f"{self.name}: weights not found:\n  - " + "\n  - ".join(missing))
        if str(device).startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise OfficialUnavailable(f"{self.name}: needs a CUDA GPU (device={device!r}); none is available here")
        self.load()

    @property
    def env_file(self) -> Path:
        return PROJECT / "workflow" / "envs" / f"{self.name}.yaml"

    def _require_code(self) -> None:
        where = ""
        if self.REPO_VAR:
            if self.repo is None or not self.repo.is_dir():
                raise OfficialUnavailable(
                    f"{self.name}: the upstream checkout is not set or missing ({self.repo or 'unset'}): "
                    f"{self.INSTALL}; then pass repo=<checkout> or set ${self.REPO_VAR}. "
                    f"Run it in the conda environment {self.env_file}")
            where = f" (checkout {self.repo})"
            if str(self.repo) not in sys.path:
                sys.path.insert(0, str(self.repo))
        try:
            importlib.import_module(self.MODULE)
        except ImportError as e:
            raise OfficialUnavailable(
                f"{self.name}: cannot import the upstream module {self.MODULE!r}{where}: {e}. {self.INSTALL}; "
                f"run it in the conda environment {self.env_file} (Snakemake `conda:`)") from None

    @classmethod
    def protocol_seeds(cls, benchmark: str | None, seeds: list[int]) -> list[int]:
        """The seeds the release's own protocol uses on `benchmark` for len(seeds) images (default: `seeds`)."""
        return list(seeds)

    def missing_weights(self) -> list[str]:
        """One line per missing weight: what it is and where it must be."""
        raise NotImplementedError

    def load(self) -> None:
        raise NotImplementedError

    def generate(self, prompt: str, references: list, seed: int, phrases: list[str] | None = None, **settings):
        raise NotImplementedError
