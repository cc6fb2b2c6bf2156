"""Contact sheet of multi-subject samples, for checking data by eye.

One block per sample: the K references in a row, the target below, and lines joining a
subsample of corresponding points, one colour per subject; the caption is the sample id and
prompt. With a `TokenSpec` the token grid is drawn over every image and the caption adds the
number of correspondences `map_correspondences` dropped for target-token ownership.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..infra.runfolder import atomic_file
from .records import Sample, load_sample, read_manifest
from .tokens import map_correspondences

SUBJECT_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                   (70, 240, 240), (240, 50, 230), (128, 128, 0)]
REF_PX, TARGET_PX, GAP, PAD, LINE_H = 96, 288, 48, 12, 16


def _load(source: str | os.PathLike | Iterable[Sample], n: int) -> list[Sample]:
    if isinstance(source, (str, os.PathLike)):
        return [load_sample(source, rec) for rec in read_manifest(source)[:n]]
    return list(source)[:n]


def _grid(draw: ImageDraw.ImageDraw, x0: int, y0: int, size_px: int, n_cells: int) -> None:
    for c in range(1, n_cells):
        t = round(c * size_px / n_cells)
        draw.line([(x0 + t, y0), (x0 + t, y0 + size_px - 1)], fill=(128, 128, 128, 110))
        draw.line([(x0, y0 + t), (x0 + size_px - 1, y0 + t)], fill=(128, 128, 128, 110))


def _block(s: Sample, lines_per_subject: int, spec, font) -> Image.Image:
    k = s.k
    width = max(k * (REF_PX + PAD) - PAD, TARGET_PX) + 2 * PAD
    caption = f"{s.id}: {s.prompt}"
    if spec is not None:
        tc = map_correspondences([r.points for r in s.references], [r.image.shape[:2] for r in s.references],
                                 s.target.shape[:2], spec.downsample, spec.patch)
        caption += f"  [{len(tc.target_token)} token pairs, {tc.dropped} points dropped by ownership]"
    text = textwrap.wrap(caption, max(20, width // 7))
    height = PAD + REF_PX + GAP + TARGET_PX + PAD + LINE_H * len(text) + PAD
    img = Image.new("RGBA", (width, height), (255, 255, 255, 255))
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw, odraw = ImageDraw.Draw(img), ImageDraw.Draw(overlay)
    cell = spec.downsample * spec.patch if spec is not None else 0

    tx0, ty0 = (width - TARGET_PX) // 2, PAD + REF_PX + GAP
    th, tw = s.target.shape[:2]
    img.paste(Image.fromarray(s.target).resize((TARGET_PX, TARGET_PX), Image.NEAREST), (tx0, ty0))
    if cell:
        _grid(odraw, tx0, ty0, TARGET_PX, th // cell)
    for j, r in enumerate(s.references):
        colour = SUBJECT_COLOURS[j % len(SUBJECT_COLOURS)]
        rx0, ry0 = PAD + j * (REF_PX + PAD), PAD
        rh, rw = r.image.shape[:2]
        img.paste(Image.fromarray(r.image).resize((REF_PX, REF_PX), Image.NEAREST), (rx0, ry0))
        draw.rectangle([rx0 - 2, ry0 - 2, rx0 + REF_PX + 1, ry0 + REF_PX + 1], outline=colour, width=2)
        if cell:
            _grid(odraw, rx0, ry0, REF_PX, rh // cell)
        p = np.asarray(r.points).reshape(-1, 4)
        for ry, rx, ty, tx in p[np.linspace(0, len(p) - 1, min(lines_per_subject, len(p))).astype(int)]:
            a = (rx0 + (rx + 0.5) * REF_PX / rw, ry0 + (ry + 0.5) * REF_PX / rh)
            b = (tx0 + (tx + 0.5) * TARGET_PX / tw, ty0 + (ty + 0.5) * TARGET_PX / th)
            odraw.line([a, b], fill=(*colour, 170), width=1)
            for x, y in (a, b):
                odraw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=(*colour, 255), outline=(255, 255, 255, 255))
    img = Image.alpha_composite(img, overlay)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(text):
        draw.text((PAD, ty0 + TARGET_PX + PAD + i * LINE_H), line, fill=(0, 0, 0), font=font)
    return img.convert("RGB")


def write_preview(source: str | os.PathLike | Iterable[Sample], out_png: str | os.PathLike, n: int = 4,
                  spec=None, lines_per_subject: int = 12) -> Path:
    """Write a contact sheet of the first `n` samples (a list of Samples or a dataset folder).

    `spec` (a `TokenSpec`, optional) adds the token grid and ownership-drop counts.
    """
    samples = _load(source, n)
    if not samples:
        raise ValueError(f"{source}: no samples to preview")
    font = ImageFont.load_default(size=13)
    blocks = [_block(s, lines_per_subject, spec, font) for s in samples]
    sheet = Image.new("RGB", (max(b.width for b in blocks), sum(b.height for b in blocks) + len(blocks) - 1),
                      (200, 200, 200))
    y = 0
    for b in blocks:
        sheet.paste(b, (0, y))
        y += b.height + 1
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
