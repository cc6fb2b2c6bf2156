"""The run-folder contract: the names of the files a run folder holds, and how every writer writes.

Why it exists: the trainer writes a run folder, the sampler reads it, the workflow decides from
it whether to resume, and the tables read what the evaluations wrote; all of them must agree on
the names. And nothing is ever half-written where a later step could take it for finished:
every file and folder of the project is written under a temporary name beside its destination
and renamed into place when complete (`os.replace`, atomic on one filesystem), so an
interrupted writer leaves at most a hidden temporary, never a truncated output.

A training run folder (`mosaic train`, train.output_dir)::

    config.yaml            the resolved config (mosaic.config)
    inputs.sha256          digest of the data and weights the run read (the workflow's resume check)
    checkpoints/latest     the tag of the latest complete checkpoint; checkpoints/step_<n>/ each
    lora.safetensors       the exported LoRA (lora mode), or transformer/ (base mode)
    extension.safetensors  a controlled baseline's extra modules (model.extension)
    mechanism.json         held-out mechanism metrics; attention.png their figure
    mlflow_run_id          the run's MLflow run id (resume reopens the same run)
    done.json              the workflow's marker that the run is finished, written last

A sample folder (`mosaic sample`): images/, attention/, manifest.jsonl.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

CONFIG_FILE = "config.yaml"
INPUTS_FILE = "inputs.sha256"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
LORA_FILE = "lora.safetensors"  # the sampled LoRA: the EMA weights when the training keeps an EMA
LORA_RAW_FILE = "lora_raw.safetensors"  # with an EMA: the trained (non-averaged) LoRA, as upstream exports both
BASE_DIR = "transformer"
EXTENSION_FILE = "extension.safetensors"
METRICS_FILE = "mechanism.json"
ATTENTION_FIGURE = "attention.png"
RUN_ID_FILE = "mlflow_run_id"
DONE_FILE = "done.json"
MANIFEST_FILE = "manifest.jsonl"


def temporary(path: str | os.PathLike) -> Path:
    """The hidden temporary beside `path` (same suffix, so writers that read the format from it work)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write `path` through; renamed into place on success, removed on error."""
    path = Path(path)
    tmp = temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write text or bytes to `path` atomically; returns the path."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary folder that replaces `path` when the block succeeds (an existing
    `path` is an error unless `overwrite`); on error the temporary is removed and `path` is untouched."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: output folder exists (pass overwrite=True / --overwrite to replace it)")
    tmp = temporary(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
