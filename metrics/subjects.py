"""Per-subject scores of the places world: does each prompted place hold its own subject?

Why it exists (issue 22, decision 6): in the places world the prompt names each subject's kind and
place ("a cross at the top left") and only its reference carries its colours and texture. So each
subject can be scored on its own, in the place the prompt gives it (the manifest reference's `box`):

- `Own-Ref`: how much of its own reference's colours that place carries;
- `Other-Ref`: how much of another reference's colours it carries (the most of any other reference
  of the image): identity blending and attribute leakage, per subject;
- `Shape-Acc`: whether the shape classifier (`metrics.tiny_evaluators.shape_training`, trained on real
  subject crops) names the prompted kind there (100 or 0).

Colours are read on the world's palette (`mosaic.data.synthetic.COLOURS`): each pixel goes to its
nearest palette or background colour, and pixels nearer a background colour, or further than
`max_distance` (RGB) from every colour, are not subject pixels. A place's (or a reference's)
colour histogram is the share of each palette colour among its subject pixels; a score is the
histogram intersection sum_c min(p_c, q_c), x100: 100 when the place carries the reference's
colours in the reference's proportions, 0 when it shares none. A pasted own subject scores near
100 on `Own-Ref` and near 0 on `Other-Ref` (the world's subjects share no colour up to K = 5);
another subject's colours score the reverse. Protocol `places-palette`: this project's own,
comparable within the places world only.
"""
from __future__ import annotations

import numpy as np

from mosaic.data.synthetic import BACKGROUNDS, COLOURS

from .manifest import Item
from .registry import Metric, MetricUnavailable, Row, load_refs, register

PALETTE = np.array(list(COLOURS.values()), np.float64)  # [P, 3] subject colours
_ALL = np.concatenate([PALETTE, np.array(list(BACKGROUNDS.values()), np.float64)])


def palette_histogram(pixels: np.ndarray, max_distance: float = 60.0) -> np.ndarray:
    """float [P]: the share of each palette colour among the subject pixels of uint8 [..., 3] `pixels`
    (all zeros when none is a subject pixel)."""
    rgb = pixels.reshape(-1, 3).astype(np.float64)
    d = np.linalg.norm(rgb[:, None] - _ALL[None], axis=-1)
    nearest = d.argmin(1)
    keep = (nearest < len(PALETTE)) & (d.min(1) <= max_distance)
    counts = np.bincount(nearest[keep], minlength=len(PALETTE)).astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


def intersection(p: np.ndarray, q: np.ndarray) -> float:
    """Histogram intersection of two palette histograms, x100."""
    return 100.0 * float(np.minimum(p, q).sum())


def place_scores(image: np.ndarray, boxes: list[tuple[int, int, int, int]], refs: list[np.ndarray],
                 max_distance: float = 60.0) -> list[tuple[float, float, str]]:
    """(own, other, reason) per subject j: reference j's colours in box j, and the most of any other
    reference's; `other` is NaN for a single subject, both are 0 with a reason for an empty place."""
    ref_h = [palette_histogram(r, max_distance) for r in refs]
    out = []
    for j, (y0, x0, y1, x1) in enumerate(boxes):
        q = palette_histogram(image[y0:y1, x0:x1], max_distance)
        others = [intersection(q, h) for i, h in enumerate(ref_h) if i != j]
        other = max(others) if others else float("nan")
        why = "" if q.any() else "no subject colour in its place"
        out.append((intersection(q, ref_h[j]), other, why if others else why or "one subject: nothing to leak"))
    return out


class _PlaceMetric(Metric):
    inputs = ("image", "references")
    config_key = "subjects"
    model_keys = ()
    protocols = ("places-palette",)

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.max_distance = float((cfg.get(self.config_key) or {}).get("max_distance", 60.0))

    def identity(self) -> dict[str, str]:
        return {"model": "", "weights": "", "protocol": self.protocol,
                "procedure": f"{self.what}; palette histograms of the prompted place and the reference (nearest "
                             f"world colour within {self.max_distance:g} RGB), histogram intersection x100",
                "world": "places"}

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        rows = []
        for i, (it, img) in enumerate(zip(items, images)):
            boxes = [r.box for r in it.references]
            if any(b is None for b in boxes):
                rows += [Row(i, j, float("nan"), "no prompted place (manifest references[].box)")
                         for j in range(len(boxes))]
                continue
            refs = self.ctx.cached("subjects|references", [str(r.image) for r in it.references], load_refs)
            for j, (own, other, why) in enumerate(place_scores(img, boxes, refs, self.max_distance)):
                rows.append(Row(i, j, own if self.which == "own" else other, why))
        return rows


@register
class OwnRef(_PlaceMetric):
    name = "Own-Ref"
    which, what = "own", "its own reference's colours in each subject's prompted place"


@register
class OtherRef(_PlaceMetric):
    name = "Other-Ref"
    which, what = "other", "the most of another reference's colours in each subject's prompted place"


@register
class ShapeAcc(Metric):
    name = "Shape-Acc"
    inputs = ("image", "references")
    config_key = "subjects"
    model_keys = ("model",)
    protocols = ("places-classifier",)

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        from .tiny_evaluators.shape_training import load_shape_classifier

        path = (cfg.get(self.config_key) or {}).get("model")
        if not path:
            raise MetricUnavailable(f"metrics config section {self.config_key!r} has no 'model' (the shape classifier)")
        self.model_path = str(path).removeprefix("local-dir:")
        self.clf = ctx.model(("shape", self.model_path), lambda: load_shape_classifier(self.model_path))

    def identity(self) -> dict[str, str]:
        return {"model": "tiny shape classifier (places world)", "weights": self.model_path, "protocol": self.protocol,
                "procedure": "the classifier's kind on each subject's prompted place = the kind its phrase names "
                             "(100 or 0)", "world": "places"}

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        rows = []
        for i, (it, img) in enumerate(zip(items, images)):
            if any(r.box is None for r in it.references):
                rows += [Row(i, j, float("nan"), "no prompted place (manifest references[].box)")
                         for j in range(len(it.references))]
                continue
            kinds = self.clf.predict([img[y0:y1, x0:x1] for y0, x0, y1, x1 in (r.box for r in it.references)])
            for j, (r, kind) in enumerate(zip(it.references, kinds)):
                want = r.phrase.split(" at ")[0].split()[-1]  # "a cross at the top left" -> "cross"
                rows.append(Row(i, j, 100.0 * (kind == want), "" if kind == want else f"classified {kind!r}"))
        return rows
