"""A procedural multi-subject world with exact correspondences (the tiny profile's data).

Why it exists: the losses need reference->target correspondences, and on 2 CPU cores with no
downloaded data we need thousands of multi-subject samples in seconds, with ground truth
that is exact rather than estimated.

The world: an `Identity` is a shape, two named colours and a texture pattern with its own
frequency, orientation and phase, so identity lives in fine detail, not in colour alone.
Each identity is pre-rendered once on a `canonical_res` x `canonical_res` canonical grid over
subject coordinates (u, v) in [-1, 1]^2 (u right, v down; every shape fits the unit disk).
Any view of a subject is drawn by inverse-mapping each pixel centre through its `Pose` to
canonical coordinates and reading the canonical cell there (nearest neighbour, no
antialiasing). So a pixel's colour is a function of its canonical cell, and a target pixel
and the reference pixel that samples the same cell have exactly the same colour: that is
the correspondence. Target pixels whose cell no reference pixel samples are dropped;
occluded pixels (a later subject drawn on top) get none.

Identities come from a fixed pool drawn from `world_seed` and are partitioned into
train / val / test, which share no identity and no (shape, colours, pattern) combination,
so evaluation is on unseen subjects. Each sample draws from its own generator seeded by
(seed, split, index): a sample does not depend on generation order.

The subjects of one sample are told apart by colour, as a real benchmark's subjects (a dog, a
backpack) are told apart at a glance: with `distinct_colours` (default) no two share a colour,
or, where the split's identities allow no such choice (always beyond K = 5: 10 colours), no two
share their primary colour. Without it (generator version 1), 35% of the subject pairs of a
K = 4 sample shared a colour, the tiny model's 8-px tokens told such subjects apart poorly, and
neither loss changed which subject a reference attended to (bench/mechanism_check.py: subject
leakage at chance for all four variants).

Two worlds share this code (`WORLDS`, chosen by name):
- `blobs` (generator version 2): free layout, the prompt names each subject's colour, pattern and
  shape ("a red striped cross"). The tiny base learnt colours and backgrounds from it, never shapes,
  and a model without references could reach every metric from the prompt alone.
- `places` (generator version 3, issue 22): each subject stands in one of the slots of a
  `grid` (3 x 2 by default: top/bottom x left/centre/right, so K <= 6) and the prompt names only
  what a person would write without seeing it: its kind and its place ("a cross at the top
  left"). Colours and texture, what tells one identity from another of its kind, come only from
  its reference, so identity blending and attribute leakage can show and be measured per subject.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .records import DatasetWriter, Reference, Sample

GENERATOR_VERSION = 3  # 2: distinct_colours; 3: the places world (layout, phrase, vocabulary settings)
SPLITS = ("train", "val", "test")

# Named colours: the words used in prompts. Subject colours are saturated; backgrounds pale.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "orange": (245, 140, 20), "yellow": (240, 210, 30), "green": (50, 160, 60),
    "teal": (20, 150, 150), "blue": (40, 80, 210), "purple": (130, 50, 180), "pink": (240, 110, 180),
    "brown": (120, 75, 35), "black": (25, 25, 25), "lime": (170, 230, 60), "cyan": (70, 200, 240),
}
BLOBS_COLOURS = tuple(COLOURS)[:10]  # the blobs world's palette (lime and cyan came with the places world)
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245), "grey": (190, 190, 190), "beige": (225, 210, 180),
    "pale blue": (195, 215, 235), "pale green": (200, 230, 200),
}
BACKGROUND_TEXTURES = ("plain", "noisy", "shaded")
SHAPES = ("disk", "ring", "square", "triangle", "hexagon", "star", "cross", "heart", "crescent")
# pattern name -> the adjective used in the prompt
PATTERNS: dict[str, str] = {
    "stripes": "striped", "dots": "dotted", "checker": "checkered", "gradient": "shaded",
    "waves": "wavy", "zigzag": "zigzag", "rings": "bullseye",
}


def vocabulary() -> dict[str, Any]:
    """Every word a prompt can use, with the colours' RGB values (written into dataset metadata)."""
    return {
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "backgrounds": {k: list(v) for k, v in BACKGROUNDS.items()},
        "background_textures": list(BACKGROUND_TEXTURES),
        "shapes": list(SHAPES),
        "patterns": dict(PATTERNS),
    }


@dataclass(frozen=True)
class SyntheticConfig:
    target_size: int = 96
    ref_size: int = 48
    view_jitter: bool = True  # references: small rotation, scale, shift and random horizontal flip
    canonical_res: int | None = None  # canonical texture cells per side; None: 2/3 of ref_size, so every
    # cell of the reference's subject is sampled by some reference pixel (all correspondences kept)
    world_seed: int = 20260101  # fixes the identity pool and its split
    n_train: int = 200  # identities per split
    n_val: int = 40
    n_test: int = 40
    max_k: int = 8
    target_radius: tuple[float, float] = (0.30, 0.45)  # subject radius / half the target size, before crowding
    max_rotation: float = 30.0  # degrees, targets (kept below 45 so square and diamond stay distinct)
    ref_rotation: float = 10.0  # degrees, reference view jitter
    min_visible: float = 0.6  # each subject keeps at least this fraction of its area visible
    distinct_colours: bool = True  # a sample's subjects share no colour (failing that, no primary colour)
    colours: tuple[str, ...] = BLOBS_COLOURS  # the identities' palette (names in COLOURS)
    all_distinct: bool = False  # no colour shared by a sample's subjects, found by search (else an error)
    shapes: tuple[str, ...] = SHAPES  # the identities' kinds
    patterns: tuple[str, ...] = tuple(PATTERNS)
    frequency: tuple[float, float] = (3.0, 6.0)  # pattern periods across a subject's width
    textured_background: bool = True  # targets: plain, noisy or shaded backgrounds (else plain)
    layout: str = "free"  # "free": anywhere, z-ordered; "places": one subject per slot of `grid`
    grid: tuple[int, int] = (3, 2)  # places layout: columns, rows
    fill: float = 0.92  # places layout: subject diameter / the slot's shorter side, before a 0.9-1 jitter
    phrase: str = "full"  # "full": colour, pattern and shape; "kind": the shape and its place only

    def __post_init__(self):
        for name, value, known in (("layout", self.layout, LAYOUTS), ("phrase", self.phrase, PHRASES)):
            if value not in known:
                raise ValueError(f"SyntheticConfig.{name} = {value!r}: must be one of {', '.join(known)}")
        unknown = ([x for x in self.shapes if x not in SHAPES] + [x for x in self.patterns if x not in PATTERNS]
                   + [x for x in self.colours if x not in COLOURS])
        if unknown or not self.shapes or not self.patterns or len(self.colours) < 2:
            raise ValueError(f"SyntheticConfig shapes/patterns/colours: unknown or too few ({unknown}); known shapes "
                             f"{', '.join(SHAPES)}, patterns {', '.join(PATTERNS)}, colours {', '.join(COLOURS)}")
        if self.all_distinct and 2 * self.max_k > len(self.colours):
            raise ValueError(f"SyntheticConfig.all_distinct: max_k = {self.max_k} subjects need {2 * self.max_k} "
                             f"colours, the palette has {len(self.colours)}")
        if self.phrase == "kind" and self.layout != "places":
            raise ValueError("SyntheticConfig.phrase = 'kind' needs layout = 'places' (the place tells subjects apart)")
        if self.layout == "places" and self.max_k > self.grid[0] * self.grid[1]:
            raise ValueError(f"SyntheticConfig.max_k = {self.max_k}: a {self.grid[0]} x {self.grid[1]} grid has "
                             f"{self.grid[0] * self.grid[1]} places")

    @property
    def res(self) -> int:
        return self.canonical_res or max(8, 2 * self.ref_size // 3)

    def places(self) -> list[tuple[str, tuple[int, int, int, int]]]:
        """The places layout's slots, row by row: (name, (y0, x0, y1, x1) in target pixels)."""
        cols, rows = self.grid
        col_words = {1: ["centre"], 2: ["left", "right"], 3: ["left", "centre", "right"]}[cols]
        row_words = {1: [""], 2: ["top", "bottom"], 3: ["top", "middle", "bottom"]}[rows]
        ys, xs = np.linspace(0, self.target_size, rows + 1).round(), np.linspace(0, self.target_size, cols + 1).round()
        return [(f"{rw} {cw}".strip(), (int(ys[r]), int(xs[c]), int(ys[r + 1]), int(xs[c + 1])))
                for r, rw in enumerate(row_words) for c, cw in enumerate(col_words)]


LAYOUTS = ("free", "places")
PHRASES = ("full", "kind")
# The worlds by name (the data config's `world`); sizes come from the profile.
WORLDS: dict[str, dict[str, Any]] = {
    "blobs": {},
    "places": dict(layout="places", phrase="kind", grid=(3, 2), max_k=6, shapes=("disk", "square", "triangle", "cross"),
                   colours=tuple(COLOURS), all_distinct=True,
                   patterns=("stripes", "checker"), frequency=(2.0, 3.0), textured_background=False,
                   max_rotation=0.0, fill=0.9),
}


def world_config(world: str, **sizes) -> SyntheticConfig:
    """The `SyntheticConfig` of a named world at the given sizes (target_size, ref_size)."""
    if world not in WORLDS:
        raise ValueError(f"world {world!r}: must be one of {', '.join(WORLDS)}")
    return SyntheticConfig(**{**WORLDS[world], **sizes})


@dataclass(frozen=True)
class Identity:
    id: str
    shape: str
    primary: str
    secondary: str
    pattern: str
    frequency: float  # pattern periods across the subject's width
    orientation: float  # degrees
    phase: float  # fraction of a period

    @property
    def phrase(self) -> str:
        return _article(f"{self.primary} {PATTERNS[self.pattern]} {self.shape}")

    def describe(self, cfg: SyntheticConfig, place: str | None = None) -> str:
        """The words a prompt uses for this subject: all its details, or (phrase "kind") its kind and place."""
        return self.phrase if cfg.phrase == "full" else f"{_article(self.shape)} at the {place}"


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


@dataclass(frozen=True)
class Pose:
    """Canonical (u, v) -> pixel (y, x): optional mirror in u, rotate, scale by `radius`, shift."""

    cy: float
    cx: float
    radius: float  # pixels per canonical unit
    angle: float = 0.0  # degrees, clockwise on screen (y points down)
    flip: bool = False

    def to_pixels(self, u, v) -> tuple[np.ndarray, np.ndarray]:
        u = -np.asarray(u, np.float64) if self.flip else np.asarray(u, np.float64)
        c, s = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        return self.cy + self.radius * (s * u + c * v), self.cx + self.radius * (c * u - s * v)

    def to_canonical(self, y, x) -> tuple[np.ndarray, np.ndarray]:
        dy, dx = (np.asarray(y) - self.cy) / self.radius, (np.asarray(x) - self.cx) / self.radius
        c, s = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        u, v = c * dx + s * dy, -s * dx + c * dy
        return (-u if self.flip else u), v


class Rendering(NamedTuple):
    rgb: np.ndarray  # uint8 [H, W, 3], zero outside the mask
    mask: np.ndarray  # bool [H, W]
    cell: np.ndarray  # int64 [H, W]: canonical cell index (i * res + j) of each subject pixel, -1 elsewhere


# ---------------------------------------------------------------- canonical subjects

def _star(u, v, n: int, inner: float, phase: float, radius: float = 0.95) -> np.ndarray:
    """Inside a regular n-point star (a regular polygon when inner = cos(pi / n))."""
    r = np.hypot(u, v)
    a = np.mod(np.arctan2(u, -v) - phase, 2 * np.pi / n)  # angle from "up", folded into one sector
    a = np.minimum(a, 2 * np.pi / n - a)  # mirror into [0, pi/n]
    px, py = r * np.cos(a), r * np.sin(a)
    ax, bx, by = radius, inner * radius * np.cos(np.pi / n), inner * radius * np.sin(np.pi / n)
    return (bx - ax) * py - by * (px - ax) >= 0  # on the origin side of the outer->inner edge


def shape_mask(shape: str, u, v) -> np.ndarray:
    """Inside test of a shape at canonical coordinates (all shapes fit the unit disk)."""
    r = np.hypot(u, v)
    if shape == "disk":
        return r <= 0.95
    if shape == "ring":
        return (r <= 0.95) & (r >= 0.5)
    if shape == "square":
        return (np.abs(u) <= 0.67) & (np.abs(v) <= 0.67)
    if shape == "triangle":
        return _star(u, v, 3, 0.5, 0.0)
    if shape == "hexagon":
        return _star(u, v, 6, math.cos(math.pi / 6), 0.0)
    if shape == "star":
        return _star(u, v, 5, 0.45, 0.0)
    if shape == "cross":
        return ((np.abs(u) <= 0.3) | (np.abs(v) <= 0.3)) & (np.maximum(np.abs(u), np.abs(v)) <= 0.9)
    if shape == "heart":
        x, y = u / 0.72, -v / 0.72 + 0.12
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    if shape == "crescent":
        return (r <= 0.95) & (np.hypot(u - 0.4, v + 0.1) > 0.72)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def pattern_value(ident: Identity, u, v) -> np.ndarray:
    """Texture in [0, 1] (0 = primary colour, 1 = secondary) at canonical coordinates."""
    t = math.radians(ident.orientation)
    a, b = u * math.cos(t) + v * math.sin(t), -u * math.sin(t) + v * math.cos(t)
    f, ph = ident.frequency / 2.0, ident.phase  # periods per canonical unit
    frac = lambda z: z - np.floor(z)  # noqa: E731
    p = ident.pattern
    if p == "stripes":
        return (frac(a * f + ph) < 0.5).astype(np.float64)
    if p == "checker":
        return (np.mod(np.floor(a * f + ph) + np.floor(b * f + ph), 2)).astype(np.float64)
    if p == "dots":
        da, db = frac(a * f + ph) - 0.5, frac(b * f + ph) - 0.5
        return (np.hypot(da, db) < 0.3).astype(np.float64)
    if p == "gradient":
        return np.clip((a + 1) / 2, 0, 1)
    if p == "waves":
        return (frac(a * f + 0.25 * np.sin(2 * np.pi * (b * f / 2 + ph))) < 0.5).astype(np.float64)
    if p == "zigzag":
        tri = np.abs(frac(b * f + ph) - 0.5)  # triangle wave in [0, 0.5]
        return (frac(a * f + tri) < 0.5).astype(np.float64)
    if p == "rings":
        return (frac(np.hypot(a - 0.2, b) * f + ph) < 0.5).astype(np.float64)
    raise ValueError(f"unknown pattern {p!r}; known: {', '.join(PATTERNS)}")


@functools.lru_cache(maxsize=4096)
def canonical_texture(ident: Identity, res: int) -> tuple[np.ndarray, np.ndarray]:
    """The identity on the canonical grid: colours uint8 [res*res, 3] and inside mask bool [res*res]."""
    c = (np.arange(res) + 0.5) * 2.0 / res - 1.0  # cell centres
    v, u = np.meshgrid(c, c, indexing="ij")
    t = pattern_value(ident, u, v)[..., None]
    p, s = np.array(COLOURS[ident.primary], np.float64), np.array(COLOURS[ident.secondary], np.float64)
    rgb = np.rint(p * (1 - t) + s * t).astype(np.uint8)
    return rgb.reshape(-1, 3), shape_mask(ident.shape, u, v).reshape(-1)


@functools.lru_cache(maxsize=64)
def _pixel_centres(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    return y, x


def pixel_cells(pose: Pose, size_hw: tuple[int, int], res: int) -> np.ndarray:
    """Canonical cell index (i * res + j) under each pixel centre, -1 outside the canonical square."""
    u, v = pose.to_canonical(*_pixel_centres(*size_hw))
    i, j = np.floor((v + 1) * (res / 2)).astype(np.int64), np.floor((u + 1) * (res / 2)).astype(np.int64)
    inside = (i >= 0) & (i < res) & (j >= 0) & (j < res)
    return np.where(inside, i * res + j, -1)


def render_subject(ident: Identity, pose: Pose, size_hw: tuple[int, int], res: int) -> Rendering:
    """The subject alone at `pose` on a `size_hw` canvas (nearest-neighbour on the canonical grid)."""
    tex, inside = canonical_texture(ident, res)
    cell = pixel_cells(pose, size_hw, res)
    mask = (cell >= 0) & inside[np.maximum(cell, 0)]
    cell = np.where(mask, cell, -1)
    rgb = np.where(mask[..., None], tex[np.maximum(cell, 0)], 0).astype(np.uint8)
    return Rendering(rgb, mask, cell)


def reference_lookup(ref: Rendering, pose: Pose, res: int) -> np.ndarray:
    """int64 [res*res]: for each canonical cell, the flat index of the reference pixel sampling it
    whose centre is nearest the cell centre (-1 where no reference subject pixel samples it)."""
    flat = np.flatnonzero(ref.mask)
    w = ref.mask.shape[1]
    cells = ref.cell.reshape(-1)[flat]
    u, v = pose.to_canonical(flat // w + 0.5, flat % w + 0.5)
    uc, vc = (cells % res + 0.5) * 2 / res - 1, (cells // res + 0.5) * 2 / res - 1
    order = np.lexsort(((u - uc) ** 2 + (v - vc) ** 2, cells))
    cells, flat = cells[order], flat[order]
    first = np.r_[True, cells[1:] != cells[:-1]]
    lut = np.full(res * res, -1, np.int64)
    lut[cells[first]] = flat[first]
    return lut


# ---------------------------------------------------------------- identities and splits

@functools.lru_cache(maxsize=8)
def _identity_pool(world_seed: int, n_train: int, n_val: int, n_test: int, shapes: tuple[str, ...],
                   patterns: tuple[str, ...], frequency: tuple[float, float], colours: tuple[str, ...]
                   ) -> dict[str, tuple[Identity, ...]]:
    rng = np.random.default_rng([world_seed, 0])
    total, seen, pool = n_train + n_val + n_test, set(), []
    if total > len(shapes) * len(colours) * (len(colours) - 1) * len(patterns) // 2:
        raise ValueError(f"{total} identities requested; the vocabulary cannot make that many distinct ones")
    while len(pool) < total:
        shape = shapes[rng.integers(len(shapes))]
        primary, secondary = (colours[i] for i in rng.choice(len(colours), 2, replace=False))
        pattern = patterns[rng.integers(len(patterns))]
        freq, orient, phase = rng.uniform(*frequency), rng.uniform(0.0, 180.0), rng.uniform(0.0, 1.0)
        key = (shape, primary, secondary, pattern)
        if key in seen:
            continue
        seen.add(key)
        pool.append(Identity(f"id{len(pool):04d}", shape, primary, secondary, pattern,
                             round(float(freq), 3), round(float(orient), 2), round(float(phase), 3)))
    return {"train": tuple(pool[:n_train]), "val": tuple(pool[n_train:n_train + n_val]),
            "test": tuple(pool[n_train + n_val:])}


def identities(split: str, cfg: SyntheticConfig | None = None) -> tuple[Identity, ...]:
    """The identities of one split (disjoint from the other splits)."""
    cfg = cfg or SyntheticConfig()
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: must be one of {', '.join(SPLITS)}")
    return _identity_pool(cfg.world_seed, cfg.n_train, cfg.n_val, cfg.n_test, tuple(cfg.shapes), tuple(cfg.patterns),
                          tuple(cfg.frequency), tuple(cfg.colours))[split]


# ---------------------------------------------------------------- samples

def _background(rng: np.random.Generator, size: int, textured: bool) -> tuple[np.ndarray, dict[str, Any]]:
    name = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    texture = BACKGROUND_TEXTURES[rng.integers(len(BACKGROUND_TEXTURES))] if textured else "plain"
    img = np.broadcast_to(np.array(BACKGROUNDS[name], np.int16), (size, size, 3)).copy()
    if texture == "noisy":
        img += rng.integers(-8, 9, (size, size, 1), dtype=np.int16)
    elif texture == "shaded":
        img += np.linspace(-12, 12, size).astype(np.int16)[:, None, None]
    return np.clip(img, 0, 255).astype(np.uint8), {"colour": name, "texture": texture}


def _pose_meta(p: Pose) -> dict[str, Any]:
    return {"cy": p.cy, "cx": p.cx, "radius": p.radius, "angle": p.angle, "flip": p.flip}


def _reference_pose(rng: np.random.Generator, cfg: SyntheticConfig) -> Pose:
    half = cfg.ref_size / 2
    if not cfg.view_jitter:
        return Pose(half, half, round(half * 0.92, 3))
    scale, (dy, dx) = rng.uniform(0.85, 1.0), rng.uniform(-1.0, 1.0, 2) * cfg.ref_size * 0.03
    return Pose(round(half + dy, 3), round(half + dx, 3), round(half * 0.92 * scale, 3),
                round(float(rng.uniform(-cfg.ref_rotation, cfg.ref_rotation)), 2), bool(rng.random() < 0.5))


def _render_all(subjects: list[Identity], poses: list[Pose], cfg: SyntheticConfig
                ) -> tuple[list[Rendering], np.ndarray]:
    """Renderings of posed subjects and their owner map (later subjects drawn on top)."""
    size = cfg.target_size
    rends, owner = [], np.full((size, size), -1, np.int64)
    for j, (ident, pose) in enumerate(zip(subjects, poses)):
        rends.append(render_subject(ident, pose, (size, size), cfg.res))
        owner[rends[-1].mask] = j
    return rends, owner


@functools.lru_cache(maxsize=None)
def shape_box(shape: str, res: int) -> tuple[float, float, float]:
    """(half extent, centre u, centre v), in canonical units, of the axis-aligned box around the shape's
    cells on the `res` x `res` canonical grid (what a rendering draws), so that the places layout centres
    every kind in its slot at the same extent (a square or a triangle fills its slot as a disk does)."""
    edges = np.arange(res + 1) * 2.0 / res - 1.0
    c = (edges[:-1] + edges[1:]) / 2
    v, u = np.meshgrid(c, c, indexing="ij")
    i, j = np.nonzero(shape_mask(shape, u, v))
    u0, u1, v0, v1 = edges[j.min()], edges[j.max() + 1], edges[i.min()], edges[i.max() + 1]
    return float(max(u1 - u0, v1 - v0) / 2), float((u0 + u1) / 2), float((v0 + v1) / 2)


def _places_layout(rng: np.random.Generator, subjects: list[Identity], cfg: SyntheticConfig
                   ) -> tuple[list[Pose], list[Rendering], np.ndarray, list[int]]:
    """One subject per slot of `cfg.grid` (distinct slots, drawn at random), centred in it up to the
    slot's slack, its axis-aligned extent `fill` of the slot's shorter side (x 0.9-1), whatever its kind.
    With `max_rotation` 0 (the places world) a subject never leaves its slot: no occlusion."""
    slots = cfg.places()
    chosen = [int(i) for i in rng.choice(len(slots), len(subjects), replace=False)]
    poses = []
    for ident, i in zip(subjects, chosen):
        y0, x0, y1, x1 = slots[i][1]
        half = min(y1 - y0, x1 - x0) / 2 * cfg.fill * rng.uniform(0.9, 1.0)  # half the subject's extent, px
        extent, cu, cv = shape_box(ident.shape, cfg.res)
        radius = half / extent
        (jy, jx) = rng.uniform(-1.0, 1.0, 2) * np.maximum(0.0, [(y1 - y0) / 2 - half, (x1 - x0) / 2 - half])
        angle, flip = float(rng.uniform(-cfg.max_rotation, cfg.max_rotation)), bool(rng.random() < 0.5)
        poses.append(Pose(round(float((y0 + y1) / 2 + jy - cv * radius), 3),
                          round(float((x0 + x1) / 2 + jx - (-cu if flip else cu) * radius), 3),
                          round(float(radius), 3), round(angle, 2), flip))
    return poses, *_render_all(subjects, poses, cfg), chosen


def _layout(rng: np.random.Generator, subjects: list[Identity], cfg: SyntheticConfig
            ) -> tuple[list[Pose], list[Rendering], np.ndarray, list[int] | None]:
    """Place subjects in z-order so each keeps >= min_visible of its area; returns poses,
    renderings and the owner map (index of the visible subject per pixel, -1 for background)."""
    if cfg.layout == "places":
        return _places_layout(rng, subjects, cfg)
    size, k = cfg.target_size, len(subjects)
    crowd = min(1.0, (2.0 / k) ** 0.4)
    for attempt in range(20):
        shrink = crowd * 0.95 ** attempt
        poses, rends, owner, areas = [], [], np.full((size, size), -1, np.int64), []
        for ident in subjects:
            for _ in range(30):
                radius = size / 2 * rng.uniform(*cfg.target_radius) * shrink
                pose = Pose(round(float(rng.uniform(radius, size - radius)), 3),
                            round(float(rng.uniform(radius, size - radius)), 3), round(float(radius), 3),
                            round(float(rng.uniform(-cfg.max_rotation, cfg.max_rotation)), 2), bool(rng.random() < 0.5))
                r = render_subject(ident, pose, (size, size), cfg.res)
                new = np.where(r.mask, len(poses), owner)
                visible = np.bincount(new.reshape(-1) + 1, minlength=k + 1)[1:len(poses) + 2]
                if (visible >= cfg.min_visible * np.array(areas + [r.mask.sum()])).all():
                    poses.append(pose), rends.append(r), areas.append(int(r.mask.sum()))
                    owner = new
                    break
            else:
                break  # this subject found no place: start the layout again, smaller
        if len(poses) == k:
            return poses, rends, owner, None
    raise ValueError(f"could not place {k} subjects in {size}x{size} px with {cfg.min_visible:.0%} visible each")


def _split_code(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: must be one of {', '.join(SPLITS)}")
    return SPLITS.index(split)


def _disjoint_colours(pool: tuple[Identity, ...], order, k: int) -> list[Identity] | None:
    """k identities sharing no colour, the earliest in `order` a depth-first search finds (None if none)."""
    order = [int(i) for i in order]

    def search(start: int, chosen: list[Identity], used: set[str]) -> list[Identity] | None:
        if len(chosen) == k:
            return chosen
        for n, i in enumerate(order[start:], start):
            c = pool[i]
            if c.primary not in used and c.secondary not in used:
                found = search(n + 1, chosen + [c], used | {c.primary, c.secondary})
                if found:
                    return found
        return None

    return search(0, [], set())


def choose_subjects(pool: tuple[Identity, ...], order, k: int, distinct_colours: bool,
                    all_distinct: bool = False) -> list[Identity] | None:
    """The first k identities in `order` with distinct prompt phrases and, with `distinct_colours`,
    no shared colour, or failing that (2k > the palette, or a small split's pool) no shared primary
    colour; with `all_distinct`, k identities sharing no colour found by search; None if there are too few."""
    if all_distinct:
        return _disjoint_colours(pool, order, k)
    def clash(c: Identity, s: Identity, rule: str | None) -> bool:
        shared = {c.primary, c.secondary} & {s.primary, s.secondary}
        return (c.phrase == s.phrase or (rule == "colours" and bool(shared))
                or (rule == "primary" and c.primary == s.primary))

    for rule in ("colours", "primary") if distinct_colours else (None,):
        subjects: list[Identity] = []
        for i in order:
            if not any(clash(pool[i], s, rule) for s in subjects):
                subjects.append(pool[i])
                if len(subjects) == k:
                    return subjects
    return None


def generate_sample(seed: int, split: str, index: int, k: int, cfg: SyntheticConfig | None = None) -> Sample:
    """Sample `index` of (`seed`, `split`) with `k` subjects; a pure function of its arguments."""
    cfg = cfg or SyntheticConfig()
    pool = identities(split, cfg)
    if min(cfg.target_size, cfg.ref_size) < 16:
        raise ValueError(f"target_size {cfg.target_size} / ref_size {cfg.ref_size}: both must be at least 16 px")
    if not 1 <= k <= min(cfg.max_k, len(pool)):
        raise ValueError(f"k = {k}: must be between 1 and {min(cfg.max_k, len(pool))}")
    rng = np.random.default_rng([seed, _split_code(split), index, 0])

    subjects = choose_subjects(pool, rng.permutation(len(pool)), k, cfg.distinct_colours, cfg.all_distinct)
    if subjects is None:
        raise ValueError(f"split {split!r} has fewer than {k} identities with distinct phrases"
                         + (" and colours" if cfg.distinct_colours else ""))

    target, bg = _background(rng, cfg.target_size, textured=cfg.textured_background)
    poses, rends, owner, slots = _layout(rng, subjects, cfg)
    places = [cfg.places()[i] for i in slots] if slots is not None else [None] * k
    words = [ident.describe(cfg, place and place[0]) for ident, place in zip(subjects, places)]
    for j, r in enumerate(rends):
        target[owner == j] = r.rgb[owner == j]
    masks = owner[None] == np.arange(k)[:, None, None]

    refs, subj_meta = [], []
    for j, (ident, pose, r) in enumerate(zip(subjects, poses, rends)):
        ref_img, ref_bg = _background(rng, cfg.ref_size, textured=False)
        ref_pose = _reference_pose(rng, cfg)
        ref = render_subject(ident, ref_pose, (cfg.ref_size, cfg.ref_size), cfg.res)
        ref_img[ref.mask] = ref.rgb[ref.mask]
        ty, tx = np.nonzero(masks[j])
        src = reference_lookup(ref, ref_pose, cfg.res)[r.cell[ty, tx]]
        keep = src >= 0
        pts = np.stack([src[keep] // cfg.ref_size, src[keep] % cfg.ref_size, ty[keep], tx[keep]], 1).astype(np.int32)
        refs.append(Reference(ref_img, words[j], pts, ident.id))
        subj_meta.append({**asdict(ident), "target_pose": _pose_meta(pose), "ref_pose": _pose_meta(ref_pose),
                          "ref_background": ref_bg["colour"]}
                         | ({"place": places[j][0], "slot": list(places[j][1])} if places[j] else {}))

    phrases = words
    listed = phrases[0] if k == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    prompt = f"{listed} on a {bg['colour']} background"
    meta = {"seed": seed, "split": split, "index": index, "background": bg, "subjects": subj_meta}
    return Sample(f"{split}-{index:06d}", prompt, target, refs, masks, meta)


def background_only(seed: int, split: str, index: int, k: int, cfg: SyntheticConfig | None = None) -> np.ndarray:
    """The target of `generate_sample(seed, split, index, k, cfg)` with no subject drawn: its exact
    background, colour and texture (the floor of an image metric, mosaic.inference.bounds)."""
    cfg = cfg or SyntheticConfig()
    pool = identities(split, cfg)
    rng = np.random.default_rng([seed, _split_code(split), index, 0])
    rng.permutation(len(pool))  # the draws generate_sample makes before the background
    return _background(rng, cfg.target_size, textured=cfg.textured_background)[0]


def sample_k(seed: int, split: str, index: int, k_min: int, k_max: int) -> int:
    """The number of subjects of sample `index` (its own stream, so samples stay order-independent)."""
    return int(np.random.default_rng([seed, _split_code(split), index, 1]).integers(k_min, k_max + 1))


def generate_dataset(out_dir, n: int, seed: int, split: str, k_min: int, k_max: int,
                     cfg: SyntheticConfig | None = None, overwrite: bool = False) -> Path:
    """Write `n` samples with K uniform in [k_min, k_max] as an atomic dataset folder."""
    cfg = cfg or SyntheticConfig()
    _split_code(split)
    if n < 1:
        raise ValueError(f"n = {n}: must be at least 1")
    if seed < 0:
        raise ValueError(f"seed = {seed}: must be non-negative")
    kmax_ok = min(cfg.max_k, len(identities(split, cfg)))
    if not 1 <= k_min <= k_max <= kmax_ok:
        raise ValueError(f"k range [{k_min}, {k_max}]: need 1 <= k_min <= k_max <= {kmax_ok}")
    metadata = {
        "source": "synthetic", "generator": __name__, "generator_version": GENERATOR_VERSION,
        "seed": seed, "split": split, "k_range": [k_min, k_max], "config": asdict(cfg),
        "vocabulary": vocabulary(), "identities": [i.id for i in identities(split, cfg)],
    }
    out = Path(out_dir)
    with DatasetWriter(out, metadata, overwrite=overwrite) as w:
        for i in range(n):
            w.add(generate_sample(seed, split, i, sample_k(seed, split, i, k_min, k_max), cfg))
    return out
