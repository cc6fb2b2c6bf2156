"""Reader for Subjects200K pairs with the SemAlign-MS-Subjects200K correspondences.

This turns the paper's real training data into our `Sample` format (K = 1), so the
losses see the same correspondences as upstream MOSAIC. Layout of the inputs:

- Subjects200K parquet shards (Yuanshi/Subjects200K): `image` is a composite of two
  512x512 views with 8 px of padding around each (1056x528); `description` is a struct
  with `item` (subject phrase), `description_0` (left view caption), `description_1`.
  Crop boxes, as in OminiControl's `Subject200KDataset` (src/train/data.py, padding=8 in
  train/config/subject_512.yaml) and MOSAIC's my_datasets/Subject200k_dataset.py:
  left = (8, 8, 520, 520), right = (528, 8, 1040, 520). MOSAIC uses the left view as the
  target, the right view as the reference and `description_0` as the prompt; so do we.
- The annotation root (SemAlign-MS-Subjects200K, mask.zip and coord.zip extracted into one
  folder): `mask/<uid>.png`, the target subject mask, and `coord/{dift,geoaware}/<uid>_ref0.pt`.

Coordinate convention (MOSAIC preprocess/{dift,geoaware}_point_matching.py): both views
are resized to 1024 px and matched on a 64x64 feature grid (stride 16). The file is a
LongTensor [4096, 2]: row i is target patch (i // 64, i % 64); its value is the (y, x)
of the best-matching reference patch on the same 64x64 grid. At 512 px a patch is 8 px
and we use its centre: pixel = 8 * patch + 4. As upstream (`build_ref2tgt_mapping`),
a point is kept only where the two matchers agree and the target patch is in the mask
(we test the mask at the patch-centre pixel; upstream samples the patch's top-left
pixel by nearest interpolation).

uid: upstream derives it from the row, sha256(f"{item}_{description_0}_{h}") with h the
first 8 hex digits of sha256 of the target crop saved as PNG by PIL (`upstream_uid`).
That PNG byte stream depends on the PIL/zlib build, so a row whose uid finds no files
is reported as missing, never guessed; pass `uid_column` to use a precomputed column.
As upstream, rows are kept only from collection_2 with all quality scores >= 5
(`quality_filter=False` keeps every row).
"""
from __future__ import annotations

import hashlib
import itertools
import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from .records import DataError, DatasetWriter, Reference, Sample
from ..infra.safeload import UnsafeCheckpoint, torch_file

PAD, VIEW = 8, 512
TARGET_BOX = (PAD, PAD, VIEW + PAD, VIEW + PAD)  # (8, 8, 520, 520)
REF_BOX = (VIEW + 2 * PAD, PAD, 2 * VIEW + 2 * PAD, VIEW + PAD)  # (528, 8, 1040, 520)
GRID = 64  # 1024 px / stride 16
QUALITY_KEYS = ("compositeStructure", "objectConsistency", "imageQuality")
MATCHERS = ("dift", "geoaware")


@dataclass
class ReadReport:
    """What happened to each row: converted, filtered out, or missing annotations."""

    rows: int = 0
    converted: int = 0
    filtered: int = 0  # failed the collection_2 / quality filter
    missing: list[str] = field(default_factory=list)  # "<file> row <i> (uid ...): <path> not found"
    sparse: int = 0  # fewer than min_points agreeing in-mask correspondences
    points: int = 0  # kept correspondences over all converted rows

    def summary(self) -> str:
        return (f"{self.rows} rows: {self.converted} converted ({self.points} points), "
                f"{self.filtered} filtered by quality, {len(self.missing)} missing annotations, "
                f"{self.sparse} with too few points")


def crop_pair(composite: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(target = left view, reference = right view) of a Subjects200K composite, in its mode.

    The mode is kept because upstream hashes the unconverted crop for the uid."""
    if composite.size != (2 * VIEW + 4 * PAD, VIEW + 2 * PAD):
        raise DataError(f"composite image is {composite.size[0]}x{composite.size[1]}, expected "
                        f"{2 * VIEW + 4 * PAD}x{VIEW + 2 * PAD} (two {VIEW}-px views, {PAD}-px padding)")
    return composite.crop(TARGET_BOX), composite.crop(REF_BOX)


def upstream_uid(item: str, description_0: str, target: Image.Image) -> str:
    """MOSAIC's annotation key for a row (see the module docstring for its caveat)."""
    buf = io.BytesIO()
    target.save(buf, format="PNG")
    img_hash = hashlib.sha256(buf.getvalue()).hexdigest()[:8]
    return hashlib.sha256(f"{item}_{description_0}_{img_hash}".encode("utf-8")).hexdigest()


def agreed_points(dift: torch.Tensor, geoaware: torch.Tensor, mask: np.ndarray, size: int = VIEW,
                  grid: int = GRID) -> np.ndarray:
    """Pixel correspondences int32 [P, 4] = (ref y, ref x, target y, target x) at `size` px.

    Keeps target patches where both matchers give the same reference patch and whose
    centre pixel lies in `mask` (bool [size, size]).
    """
    dift, geoaware = np.asarray(dift, np.int64), np.asarray(geoaware, np.int64)
    stride = size // grid
    i = np.flatnonzero((dift == geoaware).all(1))
    ty, tx = (i // grid) * stride + stride // 2, (i % grid) * stride + stride // 2
    keep = mask[ty, tx]
    ref = dift[i[keep]] * stride + stride // 2
    return np.stack([ref[:, 0], ref[:, 1], ty[keep], tx[keep]], 1).astype(np.int32)


def _load_coords(path: Path) -> torch.Tensor:
    try:
        t = torch_file(path, "coordinate file")  # tensors only; a file that needs more is refused, naming it
    except UnsafeCheckpoint as e:
        raise DataError(str(e)) from None
    except Exception as e:
        raise DataError(f"{path}: unreadable coordinate file ({type(e).__name__}: {e})") from None
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != (GRID * GRID, 2):
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise DataError(f"{path}: expected a tensor [{GRID * GRID}, 2], got {shape}")
    if t.dtype.is_floating_point or int(t.min()) < 0 or int(t.max()) >= GRID:
        raise DataError(f"{path}: coordinates must be integers in [0, {GRID}) on the {GRID}x{GRID} grid")
    return t


def _image(value: Any, where: str) -> Image.Image:
    """An HF `image` cell ({"bytes", "path"}) as a PIL image."""
    try:
        data = value.get("bytes") if isinstance(value, dict) else value
        return Image.open(io.BytesIO(data) if data is not None else value["path"])
    except Exception as e:
        raise DataError(f"{where}: image: unreadable ({type(e).__name__}: {e})") from None


def _passes_quality(row: dict[str, Any], where: str) -> bool:
    if "collection" not in row or "quality_assessment" not in row:
        raise DataError(f"{where}: no 'collection'/'quality_assessment' column (pass quality_filter=False)")
    qa = row["quality_assessment"] or {}
    return row["collection"] == "collection_2" and all((qa.get(k) or 0) >= 5 for k in QUALITY_KEYS)


def iter_rows(parquet_files: Iterable[str | os.PathLike], batch_size: int = 64) -> Iterator[tuple[str, int, dict]]:
    """(file name, row index within the file, row dict), streamed batch by batch."""
    import pyarrow.parquet as pq

    for f in parquet_files:
        i = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                yield str(f), i, row
                i += 1


def iter_subjects200k(parquet_files: Iterable[str | os.PathLike], annotations: str | os.PathLike,
                      report: ReadReport | None = None, uid_column: str | None = None,
                      quality_filter: bool = True, min_points: int = 1) -> Iterator[Sample]:
    """Samples (K = 1, 512-px target and reference) for every row with its annotations.

    Rows are counted in `report`: filtered, missing annotations, or with fewer than
    `min_points` correspondences (skipped); bad data raises DataError naming file and field.
    """
    root = Path(annotations)
    report = report if report is not None else ReadReport()
    for fname, i, row in iter_rows(parquet_files):
        report.rows += 1
        where = f"{fname} row {i}"
        if quality_filter and not _passes_quality(row, where):
            report.filtered += 1
            continue
        desc = row.get("description")
        if not isinstance(desc, dict) or not desc.get("item") or not desc.get("description_0"):
            raise DataError(f"{where}: description: needs a struct with 'item' and 'description_0'")
        composite = _image(row.get("image"), where)
        try:
            target, ref = crop_pair(composite)
        except DataError as e:
            raise DataError(f"{where}: image: {e}") from None
        if uid_column is not None:
            if uid_column not in row:
                raise DataError(f"{where}: no column {uid_column!r} (uid_column)")
            uid = str(row[uid_column])
        else:
            uid = upstream_uid(desc["item"], desc["description_0"], target)
        paths = [root / "mask" / f"{uid}.png"] + [root / "coord" / m / f"{uid}_ref0.pt" for m in MATCHERS]
        absent = [p for p in paths if not p.is_file()]
        if absent:
            report.missing.append(f"{where} (uid {uid}): {', '.join(str(p) for p in absent)} not found")
            continue
        try:
            with Image.open(paths[0]) as m:
                mask_img = m.convert("L")
        except Exception as e:
            raise DataError(f"{paths[0]}: unreadable mask ({type(e).__name__}: {e})") from None
        if mask_img.size != (VIEW, VIEW):
            mask_img = mask_img.resize((VIEW, VIEW), Image.NEAREST)
        mask = np.asarray(mask_img) > 127
        points = agreed_points(_load_coords(paths[1]), _load_coords(paths[2]), mask)
        if len(points) < min_points:
            report.sparse += 1
            continue
        report.converted += 1
        report.points += len(points)
        yield Sample(
            id=uid,
            prompt=desc["description_0"],
            target=np.asarray(target.convert("RGB")),
            references=[Reference(np.asarray(ref.convert("RGB")), desc["item"], points, subject_id=uid)],
            masks=mask[None],
            meta={"source": "subjects200k", "file": Path(fname).name, "row": i, "item": desc["item"]},
        )


def convert_subjects200k(parquet_files: Iterable[str | os.PathLike], annotations: str | os.PathLike,
                         out: str | os.PathLike, overwrite: bool = False, limit: int | None = None,
                         **kwargs: Any) -> ReadReport:
    """Write a dataset folder from Subjects200K + annotations; returns the read report."""
    report = ReadReport()
    files = [str(f) for f in parquet_files]
    with DatasetWriter(out, metadata={"source": "subjects200k", "parquet": [Path(f).name for f in files],
                                      "annotations": str(annotations)}, overwrite=overwrite) as w:
        for sample in itertools.islice(iter_subjects200k(files, annotations, report, **kwargs), limit):
            w.add(sample)
        w.metadata["read_report"] = {**asdict(report), "missing": len(report.missing)}
    return report
