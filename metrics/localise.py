"""Subject localisers for IP-Sim: where in a generated image is the reference's subject?

`instances(image, ref)` returns a list of boolean masks (at most `max_instances`, best
first; an empty list when nothing is found) or raises `NotLocalisable` with the reason
the question cannot be answered for this reference (NaN in the table, not 0).

- `masks`: the ground-truth mask the manifest gives for this subject (synthetic world).
- `background`: word-agnostic; the pixels that differ from the border's background colour,
  split into connected components, largest first (plain-background images only).
- `owlv2_sam`: XVerse-style open-vocabulary detection of the subject word (OWLv2) and a SAM
  mask per detected box, through `transformers`, from local weights folders configured as
  `ip_sim.detector` and `ip_sim.segmenter`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from mosaic.data.sample import DataError, load_image

from .manifest import RefInput
from .registry import MetricUnavailable


class NotLocalisable(Exception):
    """This reference cannot be localised (the message is the row's reason)."""


class MaskLocaliser:
    name = "masks"

    def __init__(self, key: str, sec: dict[str, Any]):
        self.max_instances = int(sec.get("max_instances", 3))
        self.model, self.weights = "ground-truth subject masks from the manifest", ""

    def instances(self, image: np.ndarray, ref: RefInput) -> list[np.ndarray]:
        if ref.mask is None:
            raise NotLocalisable("no ground-truth mask for this reference in the manifest")
        mask = load_image(ref.mask, "L") > 127
        if mask.shape != image.shape[:2]:
            raise DataError(f"{ref.mask}: mask size {mask.shape} differs from the image size {image.shape[:2]}")
        return [mask] if mask.any() else []


class BackgroundLocaliser:
    name = "background"

    def __init__(self, key: str, sec: dict[str, Any]):
        self.max_instances = int(sec.get("max_instances", 3))
        self.tolerance = float(sec.get("background_tolerance", 30))
        self.min_area = int(sec.get("min_area", 16))
        self.model = (f"background colour (border median, tolerance {self.tolerance:g}), connected "
                      f"components >= {self.min_area} px, largest first")
        self.weights = ""

    def instances(self, image: np.ndarray, ref: RefInput) -> list[np.ndarray]:
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.int16)
        bg = np.median(border, axis=0)
        fg = np.abs(image.astype(np.int16) - bg).max(-1) > self.tolerance
        labels, n = ndimage.label(fg)
        areas = np.bincount(labels.reshape(-1), minlength=n + 1)[1:]
        order = [int(c) + 1 for c in np.argsort(-areas, kind="stable") if areas[c] >= self.min_area]
        return [labels == c for c in order[: self.max_instances]]


class OwlSamLocaliser:
    """OWLv2 boxes for the subject word, then one SAM mask per box (the XVerse pipeline's shape)."""

    name = "owlv2_sam"

    def __init__(self, key: str, sec: dict[str, Any], parts: dict[str, Any] | None = None):
        self.max_instances = int(sec.get("max_instances", 3))
        self.threshold = float(sec.get("box_threshold", 0.1))
        self.query = str(sec.get("query", "{word}"))
        if parts is None:
            parts = self._load(key, sec)
        self.detector, self.det_processor = parts["detector"], parts["detector_processor"]
        self.segmenter, self.seg_processor = parts["segmenter"], parts["segmenter_processor"]
        self.model = f"OWLv2 (box threshold {self.threshold:g}) + SAM, query {self.query!r}"
        self.weights = f"{sec.get('detector')} + {sec.get('segmenter')}"

    @staticmethod
    def _load(key: str, sec: dict[str, Any]) -> dict[str, Any]:
        from transformers import Owlv2ForObjectDetection, Owlv2Processor, SamModel, SamProcessor

        paths = {}
        for part in ("detector", "segmenter"):
            value = sec.get(part)
            if not value:
                raise MetricUnavailable(f"{key}.{part} is not set: give a local folder with the "
                                        f"{'OWLv2' if part == 'detector' else 'SAM'} weights (save_pretrained layout)")
            if not Path(value).expanduser().is_dir():
                raise MetricUnavailable(f"{key}.{part}: weights folder {value} not found")
            paths[part] = str(Path(value).expanduser())
        return {"detector": Owlv2ForObjectDetection.from_pretrained(paths["detector"]).eval(),
                "detector_processor": Owlv2Processor.from_pretrained(paths["detector"]),
                "segmenter": SamModel.from_pretrained(paths["segmenter"]).eval(),
                "segmenter_processor": SamProcessor.from_pretrained(paths["segmenter"])}

    def instances(self, image: np.ndarray, ref: RefInput) -> list[np.ndarray]:
        if not ref.word:
            raise NotLocalisable("no subject word for this reference (the detector's query)")
        h, w = image.shape[:2]
        query = self.query.format(word=ref.word)
        with torch.no_grad():
            inputs = self.det_processor(text=[[query]], images=[image], return_tensors="pt")
            out = self.detector(**inputs)
            side = max(h, w)  # OWLv2 pads to a square at the bottom/right: boxes are in that frame
            det = self.det_processor.post_process_grounded_object_detection(
                out, threshold=self.threshold, target_sizes=[(side, side)])[0]
            order = torch.argsort(det["scores"], descending=True)[: self.max_instances]
            boxes = det["boxes"][order]
            if len(boxes) == 0:
                return []
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            seg_in = self.seg_processor(images=[image], input_boxes=[boxes.tolist()], return_tensors="pt")
            seg = self.segmenter(**seg_in, multimask_output=False)
            masks = self.seg_processor.post_process_masks(seg.pred_masks, seg_in["original_sizes"],
                                                          seg_in["reshaped_input_sizes"])[0]
        return [m[0].numpy().astype(bool) for m in masks]


LOCALISERS = {c.name: c for c in (MaskLocaliser, BackgroundLocaliser, OwlSamLocaliser)}


def crop_on_white(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask's bounding box, with every pixel outside the mask painted white."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    out = np.where(mask[..., None], image, 255).astype(np.uint8)
    return np.ascontiguousarray(out[y0:y1, x0:x1])
