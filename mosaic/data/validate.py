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


def _image(root: Path, rel: Any, mode: str, field: str, sid: str, line: str,
           problems: list[Problem]) -> np.ndarray | None:
    if not isinstance(rel, str):
        problems.append(Problem(line, field, f"expected a relative path, got {rel!r}", sid))
        return None
    try:
        return read_image(root / rel, mode, exact=True)
    except DataError as e:
        problems.append(Problem(rel, field, str(e), sid))
    return None


def missing_phrases(prompt: Any, phrases: list[Any]) -> list[str]:
    """The subject phrases `prompt` does not contain, case-insensitively, as the consumers search them
    (baselines.controlled.xverse.phrase_spans); an empty or non-string phrase is always missing."""
    low = prompt.lower() if isinstance(prompt, str) else ""
    return [repr(ph) for ph in phrases if not isinstance(ph, str) or not ph.strip() or ph.lower() not in low]


def _out_of_range(p: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return (p[:, 0] < 0) | (p[:, 0] >= size[0]) | (p[:, 1] < 0) | (p[:, 1] >= size[1])


def _check_sample(root: Path, rec: dict[str, Any], line: str, spec: TokenSpec | None, text_encoder: Any,
                  problems: list[Problem]) -> None:
    sid = str(rec["id"])
    refs = rec["references"]
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        problems.append(Problem(line, "references", "expected a list of objects", sid))
        return
    target = _image(root, rec["target"], "RGB", "target", sid, line, problems)
    tsize = target.shape[:2] if target is not None else None
    if tsize is not None and "size" in rec and list(rec["size"]) != list(tsize):
        problems.append(Problem(line, "size", f"{rec['size']} but {rec['target']} is {tsize[0]}x{tsize[1]}", sid))

    if spec is not None and tsize is not None and tuple(tsize) != tuple(spec.target_size):
        problems.append(Problem(rec["target"], "target", f"{tsize[0]}x{tsize[1]} but the token spec expects "
                                f"{spec.target_size[0]}x{spec.target_size[1]}", sid))

    ref_sizes: list[tuple[int, int] | None] = []
    for k, r in enumerate(refs):
        img = _image(root, r.get("image"), "RGB", f"references[{k}].image", sid, line, problems)
        ref_sizes.append(img.shape[:2] if img is not None else None)
        if "mask" not in r:
            continue
        mask = _image(root, r["mask"], "L", f"references[{k}].mask", sid, line, problems)
        if mask is not None and tsize is not None and mask.shape != tsize:
            problems.append(Problem(r["mask"], f"references[{k}].mask",
                                    f"mask is {mask.shape[0]}x{mask.shape[1]}, target is {tsize[0]}x{tsize[1]}", sid))

    corr_rel = rec["correspondences"]
    arrays: dict[str, np.ndarray] = {}
    corr_ok = False
    try:
        with np.load(root / corr_rel) as z:
            arrays = {name: z[name] for name in z.files}
        corr_ok = True
    except FileNotFoundError:
        problems.append(Problem(str(corr_rel), "correspondences", "file not found", sid))
    except Exception as e:
        problems.append(Problem(str(corr_rel), "correspondences", f"unreadable ({type(e).__name__}: {e})", sid))

    if text_encoder is not None and isinstance(rec["prompt"], str):
        over = text_encoder.overflow(rec["prompt"])
        if over:
            problems.append(Problem(line, "prompt", f"too long for the text encoder: {over}", sid))
    if not refs:
        problems.append(Problem(line, "k", "K = 0: a sample needs at least one reference", sid))
    for k, r in enumerate(refs):
        if missing_phrases(rec["prompt"], [r.get("phrase")]):
            problems.append(Problem(line, f"references[{k}].phrase", f"{r.get('phrase')!r} is not in the prompt "
                                    f"{rec['prompt']!r}", sid))
    n_masks = sum("mask" in r for r in refs)
    counts = {"k": rec["k"], "references": len(refs), "masks": n_masks}
    if corr_ok:
        counts["correspondence arrays"] = len(arrays)
    if len(set(counts.values())) > 1:
        problems.append(Problem(line, "k", "K disagrees: " + ", ".join(f"{n} = {v}" for n, v in counts.items()), sid))
    expected = {f"ref{k}" for k in range(len(refs))}
    for name in sorted(set(arrays) - expected):
        problems.append(Problem(str(corr_rel), name, f"array for no reference (sample has {len(refs)})", sid))

    pixels: dict[int, np.ndarray] = {}  # reference -> the target pixels (row-major) it claims
    tokens: dict[int, np.ndarray] = {}
    for k, r in enumerate(refs):
        name = f"ref{k}"
        if name not in arrays:
            if corr_ok:
                problems.append(Problem(str(corr_rel), name, "missing array", sid))
            continue
        p = arrays[name]
        if p.ndim != 2 or p.shape[1] != 4 or not np.issubdtype(p.dtype, np.integer):
            problems.append(Problem(str(corr_rel), name, f"expected integer [P, 4], got {p.dtype} {list(p.shape)}",
                                    sid))
            continue
        if "num_points" in r and r["num_points"] != len(p):
            problems.append(Problem(line, f"references[{k}].num_points",
                                    f"{r['num_points']} but {name} has {len(p)}", sid))
        ok = np.ones(len(p), bool)
        for what, cols, size in (("reference", slice(0, 2), ref_sizes[k]), ("target", slice(2, 4), tsize)):
            if size is None:
                continue
            bad = _out_of_range(p[:, cols], size)
            ok &= ~bad
            if bad.any():
                y, x = p[bad][0, cols]
                problems.append(Problem(str(corr_rel), name, f"{int(bad.sum())} {what} coordinates outside the "
                                        f"{size[0]}x{size[1]} image, first ({int(y)}, {int(x)})", sid))
        if tsize is not None:
            pixels[k] = np.unique(p[ok][:, 2].astype(np.int64) * tsize[1] + p[ok][:, 3])
            if spec is not None and tuple(tsize) == tuple(spec.target_size):
                tokens[k] = np.unique(pixel_to_token(p[ok][:, 2], p[ok][:, 3], tsize, spec.downsample, spec.patch))

    for field, claims, name in (("correspondences", pixels, "pixel"), ("target tokens", tokens, "token")):
        ids, counts = np.unique(np.concatenate([np.zeros(0, np.int64), *claims.values()]), return_counts=True)
        shared = ids[counts > 1]
        if len(shared):
            first = int(shared[0])
            where = f"({first // tsize[1]}, {first % tsize[1]})" if name == "pixel" else str(first)
            by = [k for k, c in claims.items() if first in c]
            problems.append(Problem(str(corr_rel), field, f"{len(shared)} target {name}s claimed by more than one "
                                    f"reference, first {name} {where} by references {by}", sid))


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
    meta = None
    if not (root / METADATA).exists():
        problems.append(Problem(METADATA, "-", "missing: the dataset is unfinished (written by an interrupted run?)"))
    else:
        try:
            meta = json.loads((root / METADATA).read_text())
        except Exception as e:
            problems.append(Problem(METADATA, "-", f"unreadable ({type(e).__name__}: {e})"))
    if not (root / MANIFEST).exists():
        problems.append(Problem(MANIFEST, "-", "missing"))
        return problems

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
