"""Locate pretrained weights offline: a local diffusers folder or a Hugging Face id in the local cache.

There is never a download. A missing location is a FileNotFoundError naming the path (or id) and
the subfolder that was looked for.
"""
from __future__ import annotations

import os
from pathlib import Path


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
