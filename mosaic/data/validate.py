"""Dataset validator: every problem in a dataset folder, each naming file and field.

Training fails late and obscurely on a bad sample (a missing mask, a point outside the
image, two references claiming one pixel, a subject phrase the prompt does not contain:
the XVerse baseline's modulation and CLIP-T find each subject by its phrase in the prompt).
`validate_dataset` reads the whole folder up front and reports all such problems at once,
so a dataset can be fixed in one pass.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .records import MANIFEST, METADATA, REQUIRED, DataError, read_image
from .tokens import pixel_to_token

if TYPE_CHECKING:
    from .dataset import TokenSpec


@dataclass
class Problem:
    file: str  # path relative to the dataset root (manifest lines: "manifest.jsonl:<line>")
    field: str  # manifest field or array name, e.g. "references[1].mask", "ref0"
    message: str
    sample_id: str | None = None

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


@dataclass
class _Record:
    """One manifest record under check: the dataset root, the record, its manifest line, and where problems go."""

    root: Path
    rec: dict[str, Any]
    line: str
    problems: list[Problem]

    @property
    def sid(self) -> str:
        """The sample's id, as problems name it."""
        return str(self.rec["id"])

    @property
    def corr(self) -> str:
        """The correspondence file's path, as problems name it."""
        return str(self.rec["correspondences"])

    def add(self, file: str, field: str, message: str) -> None:
        """Report a problem of this record's sample."""
        self.problems.append(Problem(file, field, message, self.sid))


def _image(r: _Record, rel: Any, mode: str, field: str) -> np.ndarray | None:
    """The image at `rel` (record field `field`), or None after reporting why it cannot be read."""
    if not isinstance(rel, str):
        r.add(r.line, field, f"expected a relative path, got {rel!r}")
        return None
    try:
        return read_image(r.root / rel, mode, exact=True)
    except DataError as e:
        r.add(rel, field, str(e))
    return None


def missing_phrases(prompt: Any, phrases: list[Any]) -> list[str]:
    """The subject phrases `prompt` does not contain, case-insensitively, as the consumers search them
    (baselines.controlled.xverse.phrase_spans); an empty or non-string phrase is always missing."""
    low = prompt.lower() if isinstance(prompt, str) else ""
    return [repr(ph) for ph in phrases if not isinstance(ph, str) or not ph.strip() or ph.lower() not in low]


def _out_of_range(p: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return (p[:, 0] < 0) | (p[:, 0] >= size[0]) | (p[:, 1] < 0) | (p[:, 1] >= size[1])


def _check_target(r: _Record, spec: TokenSpec | None) -> tuple[int, int] | None:
    """`target`: readable, of the recorded `size` and of the token spec's size; returns its size (None: unreadable)."""
    rec = r.rec
    target = _image(r, rec["target"], "RGB", "target")
    tsize = target.shape[:2] if target is not None else None
    if tsize is not None and "size" in rec and list(rec["size"]) != list(tsize):
        r.add(r.line, "size", f"{rec['size']} but {rec['target']} is {tsize[0]}x{tsize[1]}")

    if spec is not None and tsize is not None and tuple(tsize) != tuple(spec.target_size):
        r.add(rec["target"], "target", f"{tsize[0]}x{tsize[1]} but the token spec expects "
              f"{spec.target_size[0]}x{spec.target_size[1]}")
    return tsize


def _check_reference_images(r: _Record, refs: list[dict], tsize: tuple[int, int] | None
                            ) -> list[tuple[int, int] | None]:
    """`references[k].image` and `.mask`: readable, masks of the target's size; returns each image's size."""
    ref_sizes: list[tuple[int, int] | None] = []
    for k, ref in enumerate(refs):
        img = _image(r, ref.get("image"), "RGB", f"references[{k}].image")
        ref_sizes.append(img.shape[:2] if img is not None else None)
        if "mask" not in ref:
            continue
        mask = _image(r, ref["mask"], "L", f"references[{k}].mask")
        if mask is not None and tsize is not None and mask.shape != tsize:
            r.add(ref["mask"], f"references[{k}].mask",
                  f"mask is {mask.shape[0]}x{mask.shape[1]}, target is {tsize[0]}x{tsize[1]}")
    return ref_sizes


def _load_correspondences(r: _Record) -> dict[str, np.ndarray] | None:
    """`correspondences`: the arrays of the .npz file, or None after reporting why it cannot be read."""
    try:
        with np.load(r.root / r.rec["correspondences"]) as z:
            return {name: z[name] for name in z.files}
    except FileNotFoundError:
        r.add(r.corr, "correspondences", "file not found")
    except Exception as e:
        r.add(r.corr, "correspondences", f"unreadable ({type(e).__name__}: {e})")
    return None


def _check_prompt(r: _Record, refs: list[dict], text_encoder: Any) -> None:
    """`prompt`: within the text encoder's length (with one), and containing every reference's phrase."""
    prompt = r.rec["prompt"]
    if text_encoder is not None and isinstance(prompt, str):
        over = text_encoder.overflow(prompt)
        if over:
            r.add(r.line, "prompt", f"too long for the text encoder: {over}")
    for k, ref in enumerate(refs):
        if missing_phrases(prompt, [ref.get("phrase")]):
            r.add(r.line, f"references[{k}].phrase", f"{ref.get('phrase')!r} is not in the prompt {prompt!r}")


def _check_counts(r: _Record, refs: list[dict], arrays: dict[str, np.ndarray] | None) -> None:
    """`k`: at least one reference, and equal to the counts of references, masks and correspondence arrays
    (which must each name a reference)."""
    if not refs:
        r.add(r.line, "k", "K = 0: a sample needs at least one reference")
    counts = {"k": r.rec["k"], "references": len(refs), "masks": sum("mask" in ref for ref in refs)}
    if arrays is not None:
        counts["correspondence arrays"] = len(arrays)
    if len(set(counts.values())) > 1:
        r.add(r.line, "k", "K disagrees: " + ", ".join(f"{n} = {v}" for n, v in counts.items()))
    expected = {f"ref{k}" for k in range(len(refs))}
    for name in sorted(set(arrays or {}) - expected):
        r.add(r.corr, name, f"array for no reference (sample has {len(refs)})")


def _check_array(r: _Record, k: int, ref: dict, arrays: dict[str, np.ndarray] | None) -> np.ndarray | None:
    """Reference k's array `ref<k>`: present, integer [P, 4], of its `num_points`; None when unusable."""
    name = f"ref{k}"
    if arrays is None or name not in arrays:
        if arrays is not None:
            r.add(r.corr, name, "missing array")
        return None
    p = arrays[name]
    if p.ndim != 2 or p.shape[1] != 4 or not np.issubdtype(p.dtype, np.integer):
        r.add(r.corr, name, f"expected integer [P, 4], got {p.dtype} {list(p.shape)}")
        return None
    if "num_points" in ref and ref["num_points"] != len(p):
        r.add(r.line, f"references[{k}].num_points", f"{ref['num_points']} but {name} has {len(p)}")
    return p


def _in_bounds(r: _Record, name: str, p: np.ndarray, sizes: tuple) -> np.ndarray:
    """Which points of array `name` lie inside both images (`sizes`: reference, target; None: unknown);
    reports the others."""
    ok = np.ones(len(p), bool)
    for what, cols, size in (("reference", slice(0, 2), sizes[0]), ("target", slice(2, 4), sizes[1])):
        if size is None:
            continue
        bad = _out_of_range(p[:, cols], size)
        ok &= ~bad
        if bad.any():
            y, x = p[bad][0, cols]
            r.add(r.corr, name, f"{int(bad.sum())} {what} coordinates outside the "
                  f"{size[0]}x{size[1]} image, first ({int(y)}, {int(x)})")
    return ok


def _check_points(r: _Record, refs: list[dict], arrays: dict[str, np.ndarray] | None, sizes: tuple,
                  spec: TokenSpec | None) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Each reference's correspondence array (`sizes`: reference sizes, target size); returns the target pixels
    (row-major) and, with a spec the target matches, the target tokens each reference's valid points claim."""
    ref_sizes, tsize = sizes
    pixels: dict[int, np.ndarray] = {}
    tokens: dict[int, np.ndarray] = {}
    for k, ref in enumerate(refs):
        p = _check_array(r, k, ref, arrays)
        if p is None:
            continue
        ok = _in_bounds(r, f"ref{k}", p, (ref_sizes[k], tsize))
        if tsize is not None:
            pixels[k] = np.unique(p[ok][:, 2].astype(np.int64) * tsize[1] + p[ok][:, 3])
            if spec is not None and tuple(tsize) == tuple(spec.target_size):
                tokens[k] = np.unique(pixel_to_token(p[ok][:, 2], p[ok][:, 3], tsize, spec.downsample, spec.patch))
    return pixels, tokens


def _check_shared(r: _Record, pixels: dict[int, np.ndarray], tokens: dict[int, np.ndarray],
                  tsize: tuple[int, int] | None) -> None:
    """`correspondences` and `target tokens`: no target pixel (token) claimed by two references."""
    for field, claims, name in (("correspondences", pixels, "pixel"), ("target tokens", tokens, "token")):
        ids, counts = np.unique(np.concatenate([np.zeros(0, np.int64), *claims.values()]), return_counts=True)
        shared = ids[counts > 1]
        if len(shared):
            first = int(shared[0])
            where = f"({first // tsize[1]}, {first % tsize[1]})" if name == "pixel" else str(first)
            by = [k for k, c in claims.items() if first in c]
            r.add(r.corr, field, f"{len(shared)} target {name}s claimed by more than one "
                  f"reference, first {name} {where} by references {by}")


def _check_sample(root: Path, rec: dict[str, Any], line: str, spec: TokenSpec | None, text_encoder: Any,
                  problems: list[Problem]) -> None:
    """Every problem of one sample's record and files, field by field, appended to `problems`."""
    r = _Record(root, rec, line, problems)
    refs = rec["references"]
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        r.add(line, "references", "expected a list of objects")
        return
    tsize = _check_target(r, spec)
    ref_sizes = _check_reference_images(r, refs, tsize)
    arrays = _load_correspondences(r)
    _check_prompt(r, refs, text_encoder)
    _check_counts(r, refs, arrays)
    pixels, tokens = _check_points(r, refs, arrays, (ref_sizes, tsize), spec)
    _check_shared(r, pixels, tokens, tsize)


def _read_metadata(root: Path, problems: list[Problem]) -> Any:
    """The dataset's metadata (None after reporting it missing or unreadable)."""
    if not (root / METADATA).exists():
        problems.append(Problem(METADATA, "-", "missing: the dataset is unfinished (written by an interrupted run?)"))
        return None
    try:
        return json.loads((root / METADATA).read_text())
    except Exception as e:
        problems.append(Problem(METADATA, "-", f"unreadable ({type(e).__name__}: {e})"))
    return None


def _read_records(root: Path, problems: list[Problem]) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """The manifest's records with every required field, each with its line name, and the count of
    non-blank lines; reports lines that are not JSON objects or lack a required field."""
    records: list[tuple[str, dict[str, Any]]] = []
    n_lines = 0
    with open(root / MANIFEST) as f:
        for i, text in enumerate(f, 1):
            if not text.strip():
                continue
            n_lines += 1
            line = f"{MANIFEST}:{i}"
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                problems.append(Problem(line, "-", f"not valid JSON ({e.msg})"))
                continue
            if not isinstance(rec, dict):
                problems.append(Problem(line, "-", f"expected a JSON object, got {type(rec).__name__}"))
                continue
            missing = [k for k in REQUIRED if k not in rec]
            for k in missing:
                problems.append(Problem(line, k, "missing field", rec.get("id")))
            if not missing:
                records.append((line, rec))
    return records, n_lines


def validate_dataset(root: str | os.PathLike, spec: TokenSpec | None = None, text_encoder: Any = None
                     ) -> list[Problem]:
    """All problems found in the dataset folder `root` (empty list: the dataset is valid).

    With a `text_encoder` (mosaic.model.text: anything with `overflow(prompt)`), also reports the
    prompts it would truncate.

    With a `TokenSpec`, also checks the target size against it and reports target tokens
    claimed by more than one reference: the conflicts `map_correspondences(strict=True)`
    raises on (non-strict mode resolves them by majority vote, dropping points). Subjects
    that touch share boundary tokens, so expect these on occluding layouts.
    """
    root = Path(root)
    if not root.is_dir():
        return [Problem(str(root), "-", "not a dataset folder")]
    problems: list[Problem] = []
    meta = _read_metadata(root, problems)
    if not (root / MANIFEST).exists():
        problems.append(Problem(MANIFEST, "-", "missing"))
        return problems
    records, n_lines = _read_records(root, problems)
    if n_lines == 0:
        problems.append(Problem(MANIFEST, "-", "empty manifest: no samples"))
    if isinstance(meta, dict) and "num_samples" in meta and meta["num_samples"] != n_lines:
        problems.append(Problem(METADATA, "num_samples", f"{meta['num_samples']} but the manifest has {n_lines} lines"))

    seen: dict[str, str] = {}
    for line, rec in records:
        sid = str(rec["id"])
        if sid in seen:
            problems.append(Problem(line, "id", f"duplicate sample id (also {seen[sid]})", sid))
        seen.setdefault(sid, line)
        _check_sample(root, rec, line, spec, text_encoder, problems)
    return problems
