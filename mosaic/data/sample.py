"""The multi-subject sample and its on-disk dataset format.

Every data source (synthetic world, Subjects200K reader, collage builder) produces
`Sample` objects and writes them with `DatasetWriter`; every consumer (Dataset, preview,
validator, trainer) reads them with `read_manifest` / `load_sample`. Keeping one format
means the losses see the same correspondences whatever the source.

On disk (a dataset folder)::

    manifest.jsonl          one JSON object per sample (see `Sample.to_record`)
    dataset.json            metadata; written last, so its presence marks a finished dataset
    samples/<id>/target.png
    samples/<id>/ref<k>.png     reference k (RGB)
    samples/<id>/mask<k>.png    visible target mask of subject k (L, 0 or 255)
    samples/<id>/corr.npz       arrays ref<k>: int32 [P_k, 4] = (ref y, ref x, target y, target x)

Writing goes to a hidden temporary sibling folder that is renamed into place only when
complete, so an interrupted generation never leaves a folder that looks finished.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

MANIFEST = "manifest.jsonl"
METADATA = "dataset.json"
FORMAT_VERSION = 1


class DataError(ValueError):
    """Bad input data; the message names the file and the field."""


@dataclass
class Reference:
    """One reference image of one subject, with its correspondences into the target."""

    image: np.ndarray  # uint8 [h, w, 3]
    phrase: str  # the subject phrase as it appears in the prompt, e.g. "a red striped star"
    points: np.ndarray  # int32 [P, 4]: (ref y, ref x, target y, target x), pixel coordinates
    subject_id: str = ""  # stable identity (used for disjoint splits)


@dataclass
class Sample:
    id: str
    prompt: str
    target: np.ndarray  # uint8 [H, W, 3]
    references: list[Reference]
    masks: np.ndarray  # bool [K, H, W]: visible target pixels of each subject
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.references)

    def to_record(self) -> dict[str, Any]:
        """The manifest line (paths relative to the dataset root)."""
        d = f"samples/{self.id}"
        return {
            "id": self.id,
            "prompt": self.prompt,
            "target": f"{d}/target.png",
            "size": list(self.target.shape[:2]),
            "k": self.k,
            "references": [
                {
                    "image": f"{d}/ref{k}.png",
                    "phrase": r.phrase,
                    "subject_id": r.subject_id,
                    "mask": f"{d}/mask{k}.png",
                    "num_points": int(len(r.points)),
                }
                for k, r in enumerate(self.references)
            ],
            "correspondences": f"{d}/corr.npz",
            "meta": self.meta,
        }


def _save_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, compress_level=1)


def write_sample_files(root: Path, sample: Sample) -> dict[str, Any]:
    """Write one sample's files under `root` and return its manifest record."""
    rec = sample.to_record()
    d = root / "samples" / sample.id
    d.mkdir(parents=True, exist_ok=True)
    _save_png(root / rec["target"], sample.target)
    for k, (r, rr) in enumerate(zip(sample.references, rec["references"])):
        _save_png(root / rr["image"], r.image)
        _save_png(root / rr["mask"], (sample.masks[k] > 0).astype(np.uint8) * 255)
    np.savez(root / rec["correspondences"], **{f"ref{k}": np.asarray(r.points, np.int32).reshape(-1, 4)
                                                for k, r in enumerate(sample.references)})
    return rec


class DatasetWriter:
    """Atomic dataset writer: use as a context manager; the folder appears only on success.

    >>> with DatasetWriter(out, metadata={"source": "synthetic"}) as w:
    ...     for s in samples: w.add(s)
    """

    def __init__(self, root: str | os.PathLike, metadata: dict[str, Any] | None = None, overwrite: bool = False):
        self.root = Path(root)
        self.metadata = dict(metadata or {})
        self.overwrite = overwrite
        self.tmp = self.root.parent / f".{self.root.name}.tmp-{os.getpid()}"
        self._records: list[dict[str, Any]] = []
        self._manifest = None

    def __enter__(self) -> "DatasetWriter":
        if self.root.exists() and not self.overwrite:
            raise FileExistsError(f"{self.root}: dataset already exists (pass overwrite=True to replace it)")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self._manifest = open(self.tmp / MANIFEST, "w")
        return self

    def add(self, sample: Sample) -> None:
        rec = write_sample_files(self.tmp, sample)
        self._manifest.write(json.dumps(rec) + "\n")
        self._records.append(rec)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._manifest.close()
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        meta = {"format_version": FORMAT_VERSION, "num_samples": len(self._records), **self.metadata}
        (self.tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if self.root.exists():
            shutil.rmtree(self.root)
        os.replace(self.tmp, self.root)


def read_metadata(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / METADATA
    if not path.exists():
        raise DataError(f"{path}: missing; {root} is not a finished dataset")
    return json.loads(path.read_text())


def read_manifest(root: str | os.PathLike) -> list[dict[str, Any]]:
    """All manifest records; a malformed line raises a DataError naming file and line."""
    path = Path(root) / MANIFEST
    if not path.exists():
        raise DataError(f"{path}: manifest not found")
    records = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    return records


def load_image(path: Path, mode: str = "RGB") -> np.ndarray:
    """Read an image as uint8; unreadable files raise DataError naming the path."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert(mode))
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None


def load_sample(root: str | os.PathLike, record: dict[str, Any]) -> Sample:
    root = Path(root)
    refs = record["references"]
    corr_path = root / record["correspondences"]
    try:
        corr = np.load(corr_path)
    except FileNotFoundError:
        raise DataError(f"{corr_path}: correspondences file not found (sample {record.get('id')})") from None
    except Exception as e:
        raise DataError(f"{corr_path}: unreadable correspondences ({type(e).__name__}: {e})") from None
    with corr:
        points = [np.asarray(corr[f"ref{k}"], np.int64).reshape(-1, 4) if f"ref{k}" in corr.files
                  else np.zeros((0, 4), np.int64) for k in range(len(refs))]
    target = load_image(root / record["target"])
    masks = np.stack([load_image(root / r["mask"], "L") > 127 for r in refs]) if refs else \
        np.zeros((0, *target.shape[:2]), bool)
    return Sample(
        id=record["id"],
        prompt=record["prompt"],
        target=target,
        references=[Reference(load_image(root / r["image"]), r["phrase"], p, r.get("subject_id", ""))
                    for r, p in zip(refs, points)],
        masks=masks,
        meta=record.get("meta", {}),
    )


def iter_samples(root: str | os.PathLike) -> Iterator[Sample]:
    for rec in read_manifest(root):
        yield load_sample(root, rec)
