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
from pathlib import Path
from typing import Any

from .runfolder import atomic_write
from .tracking.run import git_sha, package_versions

PROVENANCE_FILE = "provenance.json"


class ArtefactError(RuntimeError):
    """A shipped artefact is missing or its bytes disagree with its provenance; the message names both."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != PROVENANCE_FILE)


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
