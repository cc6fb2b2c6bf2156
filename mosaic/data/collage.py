"""Collage builder: K single-subject samples -> one multi-subject sample.

Real multi-subject data with dense correspondences is scarce; composing single-subject
targets (e.g. Subjects200K) onto one canvas gives multi-subject targets whose
correspondences are known exactly, because every pasted pixel comes from a known source
pixel. Each subject is cut out by its mask, scaled, optionally flipped and translated
(nearest-neighbour, so colours are copied, never blended); later subjects occlude earlier
ones, masks keep only visible pixels, and points whose target pixel is hidden are dropped.

Geometry of one placement, per axis: a subject's mask bounding box (origin b, length n)
becomes m = ceil(n * s) canvas pixels at offset o. Canvas pixel o + j shows source pixel
b + floor((j + 0.5) / s) (mirrored j for a horizontal flip), and a target point t moves to
o + floor((t - b + 0.5) * s), the canvas pixel whose footprint holds it. When scaling down,
several points can land on one canvas pixel: one is kept (the one the pixel already shows,
else the first) and that pixel shows the kept point's own source pixel, which lies in its
footprint. So every kept correspondence joins two pixels of exactly the same colour, at
any scale; the others are dropped and counted.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .records import DataError, DatasetWriter, Reference, Sample, load_sample, read_manifest


@dataclass
class Placement:
    """Where one subject went: scale, flip and the canvas box (top, left, height, width)."""

    scale: float
    flip: bool
    top: int
    left: int
    height: int
    width: int
    src_box: tuple[int, int, int, int]  # source mask bounding box (top, left, height, width)


def join_phrases(phrases: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    phrases = list(phrases)
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(xs.min()), int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def _source_index(j: np.ndarray, origin: int, length: int, scale: float) -> np.ndarray:
    """Source pixel shown at placed offset j (nearest neighbour, pixel centres)."""
    return origin + np.minimum(np.floor((j + 0.5) / scale).astype(np.int64), length - 1)


def _canvas_index(t: np.ndarray, origin: int, scale: float) -> np.ndarray:
    """Placed offset a source pixel t lands on."""
    return np.floor((np.asarray(t, np.int64) - origin + 0.5) * scale).astype(np.int64)


def _paste(sample: Sample, p: Placement, canvas_hw: tuple[int, int]):
    """Placed image, placed mask, moved points and their validity flags for one subject."""
    by, bx, bh, bw = p.src_box
    jx = np.arange(p.width)[::-1] if p.flip else np.arange(p.width)
    src_y, src_x = np.meshgrid(_source_index(np.arange(p.height), by, bh, p.scale),
                               _source_index(jx, bx, bw, p.scale), indexing="ij")

    pts = np.asarray(sample.references[0].points, np.int64).reshape(-1, 4)
    cy, cx = _canvas_index(pts[:, 2], by, p.scale), _canvas_index(pts[:, 3], bx, p.scale)
    inside = (cy >= 0) & (cy < p.height) & (cx >= 0) & (cx < p.width)  # False only off the mask bbox
    if p.flip:
        cx = p.width - 1 - cx
    cy, cx = np.where(inside, cy, 0), np.where(inside, cx, 0)
    # One point per canvas pixel: the one whose source pixel the pixel already shows, else the
    # first; that pixel then shows the point's own source pixel, so its colour is carried exactly.
    shown = (src_y[cy, cx] == pts[:, 2]) & (src_x[cy, cx] == pts[:, 3])
    order = np.flatnonzero(inside)[np.argsort(~shown[inside], kind="stable")]
    _, first = np.unique(cy[order] * p.width + cx[order], return_index=True)
    chosen = np.zeros(len(pts), bool)
    chosen[order[first]] = True
    src_y[cy[chosen], cx[chosen]] = pts[chosen, 2]
    src_x[cy[chosen], cx[chosen]] = pts[chosen, 3]

    image = np.zeros((*canvas_hw, 3), np.uint8)
    mask = np.zeros(canvas_hw, bool)
    window = (slice(p.top, p.top + p.height), slice(p.left, p.left + p.width))
    image[window] = sample.target[src_y, src_x]
    mask[window] = sample.masks[0][src_y, src_x]
    moved = np.stack([pts[:, 0], pts[:, 1], cy + p.top, cx + p.left], 1)
    valid = chosen & mask[moved[:, 2], moved[:, 3]]
    return image, mask, moved, valid


def _place(rng: np.random.Generator, box: tuple[int, int, int, int], canvas_hw: tuple[int, int],
           scale_range: tuple[float, float], flip_prob: float) -> Placement:
    _, _, bh, bw = box
    fit = min(canvas_hw[0] / bh, canvas_hw[1] / bw)  # largest scale that fits the canvas
    lo, hi = min(scale_range[0], fit), min(scale_range[1], fit)
    scale = float(rng.uniform(lo, hi))
    h, w = min(math.ceil(bh * scale), canvas_hw[0]), min(math.ceil(bw * scale), canvas_hw[1])
    top = int(rng.integers(0, canvas_hw[0] - h + 1))
    left = int(rng.integers(0, canvas_hw[1] - w + 1))
    return Placement(scale, bool(rng.random() < flip_prob), top, left, h, w, box)


@dataclass(frozen=True)
class CollageLayout:
    """How subjects are laid out on a collage's canvas: its size (h, w) and background colour, each
    subject's scale (drawn from `scale_range`, capped to fit) and horizontal flip (with probability
    `flip_prob`). A layout is redrawn until every subject keeps at least `min_visible` of its pasted
    pixels and one correspondence, at most `max_tries` times."""

    canvas_size: tuple[int, int] = (512, 512)
    scale_range: tuple[float, float] = (0.4, 0.7)
    flip_prob: float = 0.5
    background: tuple[int, int, int] | np.ndarray = (255, 255, 255)
    min_visible: float = 0.3
    max_tries: int = 50


def _check_sources(sources: Sequence[Sample]) -> None:
    """Refuse no sources, and sources that are not K = 1 with a non-empty mask and correspondences."""
    if not sources:
        raise ValueError("build_collage needs at least one source sample")
    for s in sources:
        if s.k != 1:
            raise DataError(f"sample {s.id}: collage sources must have K = 1, got K = {s.k}")
        if not s.masks[0].any() or not len(s.references[0].points):
            raise DataError(f"sample {s.id}: collage sources need a non-empty mask and correspondences")


def _visible(pasted: list) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each pasted subject's visible mask (later subjects occlude earlier ones) and which of its points stay visible."""
    visible = [m.copy() for _, m, _, _ in pasted]
    for i in range(len(pasted)):
        for j in range(i + 1, len(pasted)):
            visible[i] &= ~pasted[j][1]
    keep = [valid & vis[pts[:, 2], pts[:, 3]] for (_, _, pts, valid), vis in zip(pasted, visible)]
    return visible, keep


def _lay_out(sources: Sequence[Sample], seed: int, layout: CollageLayout):
    """The first random layout (of `layout.max_tries`) that keeps every subject visible enough: its placements,
    pasted subjects (`_paste`), visible masks and visible points; a ValueError when none does."""
    hw = tuple(layout.canvas_size)
    rng = np.random.default_rng(seed)
    boxes = [_bbox(s.masks[0]) for s in sources]
    for _ in range(layout.max_tries):
        placements = [_place(rng, b, hw, layout.scale_range, layout.flip_prob) for b in boxes]
        pasted = [_paste(s, p, hw) for s, p in zip(sources, placements)]
        visible, keep = _visible(pasted)
        if all(v.sum() >= layout.min_visible * m.sum() and k.any()
               for v, (_, m, _, _), k in zip(visible, pasted, keep)):
            return placements, pasted, visible, keep
    raise ValueError(f"no layout of {len(sources)} subjects on a {hw[0]}x{hw[1]} canvas kept "
                     f"{layout.min_visible:.0%} of each visible after {layout.max_tries} tries; lower scale_range")


def _paint(pasted: list, layout: CollageLayout) -> np.ndarray:
    """The collage image: the background, then each pasted subject in z-order."""
    target = np.empty((*layout.canvas_size, 3), np.uint8)
    target[:] = layout.background
    for (image, mask, _, _) in pasted:
        target[mask] = image[mask]
    return target


def build_collage(
    sources: Sequence[Sample],
    seed: int,
    layout: CollageLayout = CollageLayout(),
    prompt: str | Callable[[list[str]], str] = "{subjects}",
    sample_id: str | None = None,
) -> Sample:
    """Compose single-subject samples (K = 1 each) into one sample with K = len(sources).

    Deterministic for a given seed. `prompt` is a template with "{subjects}" (the joined
    phrases) or a function of the phrase list. The subjects are placed as `layout` says; after
    `layout.max_tries` layouts that hide a subject too much a ValueError says so.
    """
    _check_sources(sources)
    placements, pasted, visible, keep = _lay_out(sources, seed, layout)
    phrases = [s.references[0].phrase for s in sources]
    references = [Reference(s.references[0].image, s.references[0].phrase, pts[k].astype(np.int32),
                            s.references[0].subject_id)
                  for s, (_, _, pts, _), k in zip(sources, pasted, keep)]
    return Sample(
        id=sample_id or f"collage-{seed}-" + "-".join(s.id for s in sources),
        prompt=prompt(phrases) if callable(prompt) else prompt.format(subjects=join_phrases(phrases)),
        target=_paint(pasted, layout),
        references=references,
        masks=np.stack(visible),
        meta={"source": "collage", "seed": seed, "sources": [s.id for s in sources],
              "placements": [asdict(p) for p in placements],
              # points lost in resampling (another point took their canvas pixel, or off the mask) / hidden
              "merged_points": [int(len(pts) - valid.sum()) for _, _, pts, valid in pasted],
              "occluded_points": [int(valid.sum() - k.sum()) for (_, _, _, valid), k in zip(pasted, keep)]},
    )


def described_prompt(sources: Sequence[Sample]) -> str:
    """A K >= 2 collage's prompt that keeps every subject's description: the joined phrases, then each source's
    own prompt (its Subjects200K description), e.g. "a mug and a red scarf. A mug on a desk... A red scarf ..."."""
    return join_phrases([s.references[0].phrase for s in sources]) + ". " + " ".join(s.prompt.strip() for s in sources)


def pair_sample(source: Sample, sample_id: str) -> Sample:
    """A K = 1 training sample as upstream builds it: the source pair itself (the subject's other view as the
    reference, its scene as the target, its description as the prompt). A description that does not contain the
    subject's phrase (which the XVerse baseline and CLIP-T look up) gets the phrase in front: "<phrase>: <desc>"."""
    phrase, prompt = source.references[0].phrase, source.prompt
    if phrase.lower() not in prompt.lower():
        prompt = f"{phrase}: {prompt}"
    return Sample(sample_id, prompt, source.target, source.references, source.masks,
                  {**source.meta, "source": "pair", "sources": [source.id], "prompt_prefixed": prompt != source.prompt})


@dataclass(frozen=True)
class CollageStyle:
    """What `write_collages` makes of each draw: K = 1 is the source pair itself (`single="pair"`, as upstream
    trains) or a one-subject collage ("collage"); a collage's prompt keeps each subject's description
    (`prompt="descriptions"`, `described_prompt`) or joins the phrases only ("phrases")."""

    single: str = "pair"
    prompt: str = "descriptions"


def write_collages(source_root: str | os.PathLike, out: str | os.PathLike, num: int, k: int | Sequence[int],
                   seed: int, overwrite: bool = False, style: CollageStyle = CollageStyle(),
                   layout: CollageLayout = CollageLayout()) -> Path:
    """Write `num` samples, each of k single-subject samples with distinct subject ids.

    `k` is one K or a list to draw each sample's K from; `style` says how K = 1 samples and prompts are made,
    `layout` how each collage is laid out (`build_collage`).
    """
    single, prompt = style.single, style.prompt
    if single not in ("pair", "collage") or prompt not in ("descriptions", "phrases"):
        raise ValueError(f"write_collages: single={single!r} (pair | collage), prompt={prompt!r} "
                         "(descriptions | phrases)")
    by_subject: dict[str, list[dict]] = {}
    for rec in read_manifest(source_root):
        subject = rec["references"][0].get("subject_id") if rec.get("references") else None
        by_subject.setdefault(subject or rec["id"], []).append(rec)
    subjects = sorted(by_subject)
    ks = [k] if isinstance(k, int) else list(k)
    if max(ks) > len(subjects):
        raise DataError(f"{Path(source_root)}: {len(subjects)} distinct subjects, cannot draw K = {max(ks)}")
    rng = np.random.default_rng(seed)
    with DatasetWriter(out, metadata={"source": "collage", "from": str(source_root), "seed": seed,
                                      "k": ks, "single": single, "prompt": prompt}, overwrite=overwrite) as w:
        for n in range(num):
            picks = rng.choice(len(subjects), size=int(rng.choice(ks)), replace=False)
            recs = [by_subject[subjects[int(i)]] for i in picks]
            sources = [load_sample(source_root, r[int(rng.integers(len(r)))]) for r in recs]
            layout_seed = int(rng.integers(2**31))
            if len(sources) == 1 and single == "pair":
                w.add(pair_sample(sources[0], f"collage{n:06d}"))
                continue
            text = described_prompt(sources) if prompt == "descriptions" else "{subjects}"
            w.add(build_collage(sources, seed=layout_seed, layout=layout, sample_id=f"collage{n:06d}",
                                prompt=(lambda _, t=text: t) if prompt == "descriptions" else text))
    return Path(out)
