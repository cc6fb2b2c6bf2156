"""Locate pretrained weights offline: a local diffusers folder or a Hugging Face id in the local cache.

There is never a download. A missing location is a FileNotFoundError naming the path (or id) and
the subfolder that was looked for. A location that holds the wrong model (another class, another
architecture) is refused from its config.json, before any weights are read: diffusers would
otherwise build the class's default (full FLUX-sized) model around it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def locate(weights: str | os.PathLike, subfolder: str) -> tuple[Path, str | None]:
    """(root, subfolder or None) for `from_pretrained`.

    Accepts a diffusers pipeline folder holding `<subfolder>/`, a component folder holding a
    config.json directly, or an HF id ("org/name") already present in the local HF cache.
    """
    path = Path(weights).expanduser()
    if not path.exists() and _looks_like_hf_id(str(weights)):
        path = _from_hf_cache(str(weights), subfolder)
    if not path.exists():
        raise FileNotFoundError(f"model weights not found: {path} does not exist")
    if (path / subfolder).is_dir():
        return path, subfolder
    if subfolder in ("transformer", "vae") and (path / "config.json").is_file():
        return path, None
    raise FileNotFoundError(f"model weights not found: {path / subfolder} (expected a diffusers folder with "
                            f"a '{subfolder}' subfolder)")


def _looks_like_hf_id(s: str) -> bool:
    return s.count("/") == 1 and not s.startswith((".", "/", "~"))


def _from_hf_cache(repo_id: str, subfolder: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:  # offline: anything short of a cached snapshot is "not found"
        raise FileNotFoundError(f"model weights not found: {repo_id!r} is neither a local path nor in the local "
                                f"Hugging Face cache (looked for its '{subfolder}' subfolder; no downloads)") from e


def component_config(root: Path, subfolder: str | None, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The component's config.json, checked: its `key` (diffusers `_class_name`, transformers `model_type`)
    must be one of `allowed`."""
    path = (root / subfolder if subfolder else root) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"model weights not found: {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable model config ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, dict) or cfg.get(key) not in allowed:
        got = cfg.get(key) if isinstance(cfg, dict) else None
        raise ValueError(f"{path}: field {key} = {got!r}, expected {' or '.join(allowed)}: the weights path holds "
                         f"another model")
    return cfg


def load_error(path: Path, cls: str, e: Exception) -> ValueError:
    """A loading failure of `cls` weights under `path` (missing file, wrong shapes, corrupt file) as one error type
    naming the folder; the original message keeps the file and the tensor."""
    return ValueError(f"{path}: cannot load {cls} weights ({type(e).__name__}: {e})")
