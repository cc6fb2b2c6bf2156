"""What the tiny-world evaluators see of the synthetic world: views, canvases, captions, recolourings, crops.

Why it exists: both trainers and the check draw their images from `mosaic.data.synthetic`, and
the CLIP trainer augments them (redrawn backgrounds, repainted subjects, subject crops at every
scale). Keeping that world-side code apart from the training loops keeps each trainer to its loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mosaic.data.synthetic import BACKGROUNDS, COLOURS, PATTERNS, SyntheticConfig, generate_sample, identities


@dataclass
class View:
    image: np.ndarray  # uint8 [h, w, 3]
    caption: str
    subject_id: str  # "" for multi-subject targets
    phrase: str


def views(split: str, n: int, seed: int, k_max: int = 3, cfg: SyntheticConfig | None = None) -> list[View]:
    """References (phrase captions) and targets (prompt captions) of `n` synthetic samples;
    single-subject targets keep their subject id, so they count as views of it."""
    out = []
    for i in range(n):
        s = generate_sample(seed, split, i, 1 + i % k_max, cfg)
        out += [View(r.image, r.phrase, r.subject_id, r.phrase) for r in s.references]
        solo = s.k == 1
        out.append(View(s.target, s.prompt, s.references[0].subject_id if solo else "",
                        s.references[0].phrase if solo else ""))
    return out


@dataclass
class Canvas:
    """A target-sized training image for CLIP: a scene, or a reference pasted onto its own
    background; `masks` locate its subjects, `subjects[j]` names subject j's shape, pattern and
    colours, `prompt` (scenes only) describes the whole image."""
    image: np.ndarray  # uint8 [s, s, 3]
    masks: np.ndarray  # bool [k, s, s]
    subjects: list[dict[str, str]]  # shape, pattern, primary, secondary
    prompt: str = ""


def _an(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def captions(s: dict[str, str]) -> tuple[str, str]:
    """A subject's captions: its prompt phrase (as the world writes it), and the phrase with both colours."""
    phrase = _an(f"{s['primary']} {PATTERNS[s['pattern']]} {s['shape']}")
    return phrase, f"{phrase} in {s['primary']} and {s['secondary']}"


def clip_canvases(split: str, n: int, seed: int, k_max: int = 3, cfg: SyntheticConfig | None = None) -> list[Canvas]:
    """Each sample's scene (its subjects located by the ground-truth masks) and each of its
    references pasted at a random place onto a scene-sized canvas of the reference's own plain
    background, so subject crops of either come at every scale the metrics meet."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for i in range(n):
        s = generate_sample(seed, split, i, 1 + i % k_max, cfg)
        subjects = [{k: m[k] for k in ("shape", "pattern", "primary", "secondary")} for m in s.meta["subjects"]]
        if (cfg is None or cfg.phrase == "full") and any(captions(m)[0] != r.phrase for m, r in zip(subjects, s.references)):
            raise ValueError(f"{s.id}: captions() does not reproduce the world's subject phrases")
        out.append(Canvas(s.target, s.masks, subjects, s.prompt))
        size = s.target.shape[0]
        for r, m in zip(s.references, subjects):
            h, w = r.image.shape[:2]
            canvas = np.broadcast_to(r.image[0, 0], (size, size, 3)).copy()
            y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            canvas[y:y + h, x:x + w] = r.image
            mask = np.zeros((1, size, size), bool)
            mask[0, y:y + h, x:x + w] = (r.image != r.image[0, 0]).any(-1)
            out.append(Canvas(canvas, mask, [m]))
    return out


def rendering_pairs(split: str, n: int, seed: int, cfg: SyntheticConfig | None = None
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two renderings of one subject per sample: its reference and a single-subject scene
    (another pose, scale and background). DINO's global views are crops of these two."""
    out = []
    for i in range(n):
        s = generate_sample(seed, split, i, 1, cfg)
        out.append((s.references[0].image, s.target))
    return out


_COLOURS = {k: torch.tensor(v, dtype=torch.float32) / 255 for k, v in COLOURS.items()}


def repaint(img: torch.Tensor, mask: torch.Tensor, s: dict[str, str], new: dict[str, str]) -> torch.Tensor:
    """The subject in `mask` repainted from colours (primary, secondary) to `new`'s: each pixel
    is primary + t (secondary - primary) for a texture value t, which is kept."""
    p, q = _COLOURS[s["primary"]][:, None], _COLOURS[s["secondary"]][:, None]
    pix = img[:, mask]
    t = (((pix - p) * (q - p)).sum(0) / ((q - p) ** 2).sum()).clamp(0, 1)
    out = img.clone()
    out[:, mask] = _COLOURS[new["primary"]][:, None] * (1 - t) + _COLOURS[new["secondary"]][:, None] * t
    return out


def held_out_combinations(cfg: SyntheticConfig | None = None) -> tuple[set, set]:
    """(shape, pattern, primary, secondary) keys and prompt phrases of the val and test
    identities: a recoloured training subject never becomes one of these."""
    held = [i for split in ("val", "test") for i in identities(split, cfg)]
    return ({(i.shape, i.pattern, i.primary, i.secondary) for i in held}, {i.phrase for i in held})


def recoloured(s: dict[str, str], exclude: tuple[set, set], gen: torch.Generator) -> dict[str, str] | None:
    """`s` with two random distinct colours, or None where that is a held-out identity's
    (shape, pattern, colours) or phrase (`exclude`, from `held_out_combinations`)."""
    colours = list(COLOURS)
    a, b = torch.randint(len(colours), (1,), generator=gen), torch.randint(1, len(colours), (1,), generator=gen)
    new = {**s, "primary": colours[int(a)], "secondary": colours[(int(a) + int(b)) % len(colours)]}
    key = (new["shape"], new["pattern"], new["primary"], new["secondary"])
    return None if key in exclude[0] or captions(new)[0] in exclude[1] else new


_BG = torch.tensor(list(BACKGROUNDS.values()), dtype=torch.float32) / 255


def random_background(size: int, gen: torch.Generator) -> torch.Tensor:
    """A scene background as the world draws them: a pale colour, plain, noisy or shaded."""
    bg = _BG[int(torch.randint(len(_BG), (1,), generator=gen))][:, None, None].expand(3, size, size).clone()
    texture = int(torch.randint(3, (1,), generator=gen))
    if texture == 1:
        bg += torch.randint(-8, 9, (1, size, size), generator=gen) / 255
    elif texture == 2:
        bg += torch.linspace(-12, 12, size)[:, None] / 255
    return bg.clamp(0, 1)


def subject_crop(img: torch.Tensor, mask: torch.Tensor, out: int, zoom: tuple[float, float], gen: torch.Generator
                 ) -> torch.Tensor:
    """A square crop around the subject in `mask` (side: the subject's extent times a random
    factor in `zoom`, capped at the image; centre jittered), resized to `out`, randomly flipped."""
    size = img.shape[-1]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    u = torch.rand(3, generator=gen)
    side = min(size, max(8, round(max(y1 - y0, x1 - x0) * (zoom[0] + (zoom[1] - zoom[0]) * float(u[0])))))
    cy = (y0 + y1) / 2 + (float(u[1]) - 0.5) * 0.2 * side
    cx = (x0 + x1) / 2 + (float(u[2]) - 0.5) * 0.2 * side
    top = min(max(0, round(cy - side / 2)), size - side)
    left = min(max(0, round(cx - side / 2)), size - side)
    crop = F.interpolate(img[None, :, top:top + side, left:left + side], size=(out, out), mode="bicubic",
                         align_corners=False, antialias=True)[0].clamp(0, 1)
    return crop.flip(-1) if torch.rand(1, generator=gen) < 0.5 else crop
