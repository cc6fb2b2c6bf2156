"""Resume or start afresh: the contract between a run folder and whoever reruns its job.

Why it exists: a scheduler (the workflow) reruns a job whose output it deleted; the run folder
must then resume a pre-empted run of the same config and inputs, and start afresh otherwise
(a changed config, changed data or weights, or a finished run rerun on purpose).
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, dump_yaml, flatten, load_config
from ..infra.runfolder import BASE_DIR, CONFIG_FILE, INPUTS_FILE, LORA_FILE, RUN_ID_FILE, atomic_write
from .checkpoint import checkpoint_step, latest_checkpoint


def run_config(source: Path | Config) -> dict[str, Any]:
    """A config (or the one saved at a path) without the keys that may change on resume (tracking, the
    after-training evaluation)."""
    cfg = load_config(source) if isinstance(source, Path) else source
    return {k: v for k, v in flatten(cfg).items() if not k.startswith(("tracking.", "eval."))}


def digest_inputs(paths: list[Path]) -> str:
    """A sha256 naming what a job read: a file's content (markers, configs), a folder's listing (each file's
    relative path, size and mtime), so regenerated data or retrained weights change it."""
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
    saved, digest = out / CONFIG_FILE, out / INPUTS_FILE
    reason = None
    if out.exists() and any(out.iterdir()):
        step = checkpoint_step(out)
        if not saved.is_file() or run_config(saved) != run_config(cfg):
            reason = f"{saved}: the config changed"
        elif not digest.is_file() or digest.read_text().strip() != inputs:
            reason = f"{digest}: the inputs changed"
        elif step is not None and step >= cfg.train.steps and any((out / f).exists() for f in (LORA_FILE, BASE_DIR)):
            reason = f"{out}: its run had finished (exported at step {step}); rerun on request"
        if reason:
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(digest, inputs + "\n")
    return reason


def prepare_output(out: Path, cfg: Config) -> None:
    """Resume or start afresh, then write the resolved config.

    The folder's saved config decides: the same config resumes (latest checkpoint, same MLflow
    run); a different one is an error if the folder holds a checkpoint of that other run, and
    otherwise (it never reached a checkpoint) starts afresh with a new MLflow run.
    """
    saved = out / CONFIG_FILE
    if saved.exists():
        old, new = run_config(saved), run_config(cfg)
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if diff and latest_checkpoint(out) is not None:
            raise ConfigError(f"{saved}: the output folder holds checkpoints of a run with a different config "
                              f"({', '.join(diff)}); use another train.output_dir or delete {out}")
        if diff:
            (out / RUN_ID_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(saved, dump_yaml(cfg))
