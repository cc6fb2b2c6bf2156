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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from ..infra.runfolder import atomic_dir

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
        self._records: list[dict[str, Any]] = []
        self._manifest = None

    def __enter__(self) -> "DatasetWriter":
        if self.root.exists() and not self.overwrite:
            raise FileExistsError(f"{self.root}: dataset already exists (pass overwrite=True to replace it)")
        self._folder = atomic_dir(self.root, overwrite=True)
        self.tmp = self._folder.__enter__()
        self._manifest = open(self.tmp / MANIFEST, "w")
        return self

    def add(self, sample: Sample) -> None:
        rec = write_sample_files(self.tmp, sample)
        self._manifest.write(json.dumps(rec) + "\n")
        self._records.append(rec)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._manifest.close()
        if exc_type is None:
            meta = {"format_version": FORMAT_VERSION, "num_samples": len(self._records), **self.metadata}
            (self.tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True))
        self._folder.__exit__(exc_type, exc, tb)


def read_metadata(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / METADATA
    if not path.exists():
        raise DataError(f"{path}: missing; {root} is not a finished dataset")
    return json.loads(path.read_text())


REQUIRED = ("id", "prompt", "target", "k", "references", "correspondences")  # manifest fields every consumer reads


def read_manifest(root: str | os.PathLike) -> list[dict[str, Any]]:
    """All manifest records; a malformed line (bad JSON, a missing field, references that are not
    a list of objects with an image, a phrase and a mask) raises a DataError naming file, line and field."""
    path = Path(root) / MANIFEST
    if not path.exists():
        raise DataError(f"{path}: manifest not found")
    records = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
            for key in REQUIRED:
                if key not in rec:
                    raise DataError(f"{path}:{i}: field {key}: missing")
            refs = rec["references"]
            if not isinstance(refs, list):
                raise DataError(f"{path}:{i}: field references: expected a list, got {type(refs).__name__}")
            for k, r in enumerate(refs):
                missing = [key for key in ("image", "phrase", "mask") if not isinstance(r, dict) or key not in r]
                if missing:
                    raise DataError(f"{path}:{i}: field references[{k}].{missing[0]}: missing")
            records.append(rec)
    return records


# 8-bit conversion of these clips or rescales values: refused rather than silently changed.
HIGH_DEPTH = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")


def read_image(path: str | os.PathLike, mode: str = "RGB", exact: bool = False) -> np.ndarray:
    """`path` as a uint8 array in `mode`; DataError with the bare reason (no path) otherwise.

    Refused: a missing or unreadable file; a 16-bit or float image (8-bit conversion would clip
    it); transparent pixels (conversion would drop the alpha and show whatever colour lies under
    them); and with `exact`, any mode but `mode` itself (the dataset format stores RGB images and
    L masks only, so another mode means the wrong file sits there).
    """
    try:
        with Image.open(path) as im:
            im.load()
            if exact and im.mode != mode:
                raise DataError(f"image mode {im.mode}, but the dataset format stores {mode} here")
            if im.mode in HIGH_DEPTH:
                raise DataError(f"image mode {im.mode} (more than 8 bits per channel): converting it to 8-bit "
                                f"{mode} would clip it; save it as 8-bit {mode}")
            if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
                alpha = np.asarray(im.convert("RGBA"))[..., 3]
                if (alpha < 255).any():
                    raise DataError(f"image mode {im.mode} with {int((alpha < 255).sum())} transparent pixels: "
                                    f"converting it to {mode} would drop the alpha; flatten it onto a background")
            return np.asarray(im.convert(mode))
    except FileNotFoundError:
        raise DataError("image file not found") from None
    except DataError:
        raise
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"unreadable image ({type(e).__name__}: {e})") from None


def load_image(path: str | os.PathLike, mode: str = "RGB", field: str | None = None, exact: bool = False) -> np.ndarray:
    """`read_image`, with errors naming the path and (if given) the field that points to it."""
    try:
        return read_image(path, mode, exact)
    except DataError as e:
        raise DataError(f"{path}: {e} (field {field})" if field else f"{path}: {e}") from None


def load_sample(root: str | os.PathLike, record: dict[str, Any]) -> Sample:
    """One manifest record -> Sample; every error names the file, the field and the sample."""
    root = Path(root)
    sid = record.get("id")
    refs = record["references"]
    corr_path = root / record["correspondences"]
    try:
        corr = np.load(corr_path)
    except FileNotFoundError:
        raise DataError(f"{corr_path}: correspondences: file not found (sample {sid})") from None
    except Exception as e:
        raise DataError(f"{corr_path}: correspondences: unreadable ({type(e).__name__}: {e}) (sample {sid})") from None
    with corr:
        points = []
        for k in range(len(refs)):
            p = np.asarray(corr[f"ref{k}"]) if f"ref{k}" in corr.files else np.zeros((0, 4), np.int64)
            if p.ndim != 2 or p.shape[1] != 4 or not np.issubdtype(p.dtype, np.integer):
                raise DataError(f"{corr_path}: ref{k}: expected integer [P, 4], got {p.dtype} {list(p.shape)} "
                                f"(sample {sid})")
            points.append(p.astype(np.int64))
    target = load_image(root / record["target"], field=f"target of sample {sid}", exact=True)
    images = [load_image(root / r["image"], field=f"references[{k}].image of sample {sid}", exact=True)
              for k, r in enumerate(refs)]
    masks = [load_image(root / r["mask"], "L", field=f"references[{k}].mask of sample {sid}", exact=True) > 127
             for k, r in enumerate(refs)]
    for k, (p, img) in enumerate(zip(points, images)):
        for what, cols, (h, w) in (("reference", slice(0, 2), img.shape[:2]),
                                   ("target", slice(2, 4), target.shape[:2])):
            y, x = p[:, cols].T
            bad = (y < 0) | (y >= h) | (x < 0) | (x >= w)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(f"{corr_path}: ref{k}: {int(bad.sum())} {what} coordinates outside the {h}x{w} "
                                f"image, first ({int(y[i])}, {int(x[i])}) (sample {sid})")
    return Sample(
        id=record["id"],
        prompt=record["prompt"],
        target=target,
        references=[Reference(img, r["phrase"], p, r.get("subject_id", "")) for r, img, p in zip(refs, images, points)],
        masks=np.stack(masks) if refs else np.zeros((0, *target.shape[:2]), bool),
        meta=record.get("meta", {}),
    )


def iter_samples(root: str | os.PathLike) -> Iterator[Sample]:
    for rec in read_manifest(root):
        yield load_sample(root, rec)
