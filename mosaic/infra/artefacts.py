"""Shipped pre-trained artefacts: a folder of weights with the provenance that made it, checked on load.

Why it exists: the tiny profile may use a base model (and evaluators) trained once by one of the
project's own commands and committed to the repository. A researcher must be able to see how a
file was made (command, config, git sha, steps, seed, package versions) and trust that the bytes
are those: `write_provenance` records a sha256 per file in `provenance.json` beside them, and
`verify` refuses a folder whose files disagree with it, naming the file and both digests.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .runfolder import atomic_dir, atomic_write
from .tracking.run import git_sha, package_versions

PROVENANCE_FILE = "provenance.json"


class ArtefactError(ValueError):
    """A shipped artefact is missing or its bytes disagree with its provenance; the message names both (a
    ValueError, so the command line reports it as an error, not a traceback)."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    """The artefact's files: all but its provenance and Snakemake's `.snakemake_timestamp` markers."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.name != PROVENANCE_FILE and not p.name.startswith(".snakemake"))


def write_provenance(folder: str | os.PathLike, command: str, config: dict[str, Any], **facts: Any) -> Path:
    """provenance.json of every file under `folder`: the command and config that made them, `facts`
    (e.g. steps, seed), this checkout's git sha, the package versions and each file's sha256."""
    folder = Path(folder)
    record = {"command": command, "config": config, **facts, "git_sha": git_sha(Path(__file__).parent),
              "versions": package_versions(), "sha256": {f: sha256(folder / f) for f in _files(folder)}}
    return atomic_write(folder / PROVENANCE_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


def verify(folder: str | os.PathLike) -> dict[str, Any]:
    """The folder's provenance, after checking that its files are exactly the recorded ones, byte for byte."""
    folder = Path(folder)
    path = folder / PROVENANCE_FILE
    if not path.is_file():
        raise ArtefactError(f"{path}: no provenance file; the artefact in {folder} cannot be checked")
    record = json.loads(path.read_text())
    recorded = record.get("sha256")
    if not isinstance(recorded, dict) or not recorded:
        raise ArtefactError(f"{path}: field 'sha256' is missing or empty")
    for name, want in sorted(recorded.items()):
        f = folder / name
        if not f.is_file():
            raise ArtefactError(f"{f}: listed in {path} (sha256 {want}) but missing")
        got = sha256(f)
        if got != want:
            raise ArtefactError(f"{f}: sha256 {got} disagrees with {path} field sha256[{name!r}] = {want}")
    extra = sorted(set(_files(folder)) - set(recorded))
    if extra:
        raise ArtefactError(f"{folder}: files not in {path}: {', '.join(extra)}")
    return record


def provenance_folder(path: str | os.PathLike, levels: int = 2) -> Path | None:
    """The artefact folder `path` belongs to: itself or one of its `levels` nearest parents holding a
    provenance.json; None for a plain folder (weights a user trained or downloaded)."""
    p = Path(path).resolve()
    for folder in [p, *p.parents][: levels + 1]:
        if (folder / PROVENANCE_FILE).is_file():
            return folder
    return None


def check_artefact(path: str | os.PathLike) -> dict[str, Any] | None:
    """Verify the artefact folder `path` lies in (see `provenance_folder`) before anything loads from
    it; its provenance, or None when `path` is not part of one."""
    folder = provenance_folder(path)
    return verify(folder) if folder is not None else None


def ship(parts: dict[str, str | os.PathLike], out: str | os.PathLike, command: str, config: dict[str, Any],
         **facts: Any) -> Path:
    """Copy each source folder to `out/<name>` and record their provenance; `out` is replaced whole and
    only once everything is written, so a failed ship leaves the previous artefact in place."""
    with atomic_dir(out, overwrite=True) as tmp:
        for name, src in parts.items():
            src = Path(src)
            if not src.is_dir():
                raise ArtefactError(f"{src}: the {name!r} part to ship is not a folder")
            shutil.copytree(src, tmp / name, ignore=shutil.ignore_patterns(".snakemake*"))
        write_provenance(tmp, command, config, **facts)
    return Path(out)
