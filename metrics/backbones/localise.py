"""Subject localisers for IP-Sim: where in a generated image is the reference's subject?

`instances(image, ref)` returns a list of boolean masks (at most `max_instances`, best
first) or of `Detection`s (a detector's box + mask, all of them, in the detector's order:
the XVerse protocol filters before it keeps 3); an empty list when nothing is found; or raises
`NotLocalisable` with the reason the question cannot be answered for this reference (NaN in the
table, not 0).

- `masks`: the ground-truth mask the manifest gives for this subject (synthetic world).
- `background`: word-agnostic; the pixels that differ from the border's background colour,
  split into connected components, largest first (plain-background images only).
- `owlv2_sam`: open-vocabulary detection of the subject word (OWLv2) and a SAM mask per detected
  box, through `transformers`, from local weights folders configured as `ip_sim.detector` and
  `ip_sim.segmenter` (this project's earlier stand-in for XVerse's pipeline).
- `florence2_sam2`: XVerse's pipeline (`eval/grounded_sam/grounded_sam2_florence2_autolabel_pipeline.py`,
  `od_grounding_and_segmentation`): Florence-2 `<OPEN_VOCABULARY_DETECTION>` of the subject word,
  beam search 3, <= 768 new tokens, then one SAM2 mask per box; returns `Detection`s (box + mask),
  in the order Florence-2 generated them, through the native `transformers` classes.

The XVerse kit's crop steps (`xverse_crops`) follow: mask on white cut to the detector's box,
instances under the W/20 size filter dropped, the first 3 kept, `pad_to_square` on white.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy import ndimage

from mosaic.data.records import DataError, load_image

from ..manifest import RefInput
from ..registry import MetricUnavailable


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


def _weights_folder(key: str, sec: dict[str, Any], part: str, what: str) -> str:
    value = sec.get(part)
    if not value:
        raise MetricUnavailable(f"{key}.{part} is not set: give a local folder with the {what} weights "
                                f"(save_pretrained layout)")
    if not Path(value).expanduser().is_dir():
        raise MetricUnavailable(f"{key}.{part}: weights folder {value} not found")
    return str(Path(value).expanduser())


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

        det, seg = _weights_folder(key, sec, "detector", "OWLv2"), _weights_folder(key, sec, "segmenter", "SAM")
        return {"detector": Owlv2ForObjectDetection.from_pretrained(det).eval(),
                "detector_processor": Owlv2Processor.from_pretrained(det),
                "segmenter": SamModel.from_pretrained(seg).eval(),
                "segmenter_processor": SamProcessor.from_pretrained(seg)}

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


class Detection(NamedTuple):
    """One detected instance: the detector's box (x0, y0, x1, y1, pixels) and its boolean mask."""
    box: tuple[float, float, float, float]
    mask: np.ndarray


class Florence2Sam2Localiser:
    """Florence-2 open-vocabulary boxes for the subject word, then one SAM2 mask per box (XVerse's kit)."""

    name = "florence2_sam2"
    task = "<OPEN_VOCABULARY_DETECTION>"

    def __init__(self, key: str, sec: dict[str, Any], parts: dict[str, Any] | None = None):
        self.max_instances = int(sec.get("max_instances", 3))
        self.num_beams, self.max_new_tokens = int(sec.get("num_beams", 3)), int(sec.get("max_new_tokens", 768))
        if parts is None:
            parts = self._load(key, sec)
        self.detector, self.det_processor = parts["detector"], parts["detector_processor"]
        self.segmenter, self.seg_processor = parts["segmenter"], parts["segmenter_processor"]
        self.model = (f"Florence-2 {self.task} (beams {self.num_beams}, <= {self.max_new_tokens} new tokens) "
                      f"+ SAM2 box prompts")
        self.weights = f"{sec.get('detector')} + {sec.get('segmenter')}"

    @staticmethod
    def _load(key: str, sec: dict[str, Any]) -> dict[str, Any]:
        det = _weights_folder(key, sec, "detector", "Florence-2 (transformers-native, e.g. florence-community/"
                                                    "Florence-2-large)")
        seg = _weights_folder(key, sec, "segmenter", "SAM2 (e.g. facebook/sam2.1-hiera-large)")
        try:  # native classes: no trust_remote_code, no code from the weights folder runs
            from transformers import Florence2ForConditionalGeneration, Florence2Processor, Sam2Model, Sam2Processor
        except ImportError as e:
            raise MetricUnavailable(f"{key}: the installed transformers has no native Florence-2 / SAM2 classes "
                                    f"({e}); install transformers >= 5") from None
        return {"detector": Florence2ForConditionalGeneration.from_pretrained(det).eval(),
                "detector_processor": Florence2Processor.from_pretrained(det),
                "segmenter": Sam2Model.from_pretrained(seg).eval(),
                "segmenter_processor": Sam2Processor.from_pretrained(seg)}

    def detect(self, image: np.ndarray, word: str) -> list[list[float]]:
        """Florence-2's boxes for `word` (x0, y0, x1, y1 in image pixels), in generation order."""
        h, w = image.shape[:2]
        with torch.no_grad():
            inputs = self.det_processor(text=self.task + word, images=[image], return_tensors="pt")
            ids = self.detector.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                                         max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                         do_sample=False, early_stopping=False)
        text = self.det_processor.batch_decode(ids, skip_special_tokens=False)[0]
        return parse_open_vocabulary(self.det_processor, text, (w, h))

    def segment(self, image: np.ndarray, boxes: list[list[float]]) -> list[np.ndarray]:
        """One SAM2 mask (single-mask output, logits > 0) per box, at image size."""
        with torch.no_grad():
            seg_in = self.seg_processor(images=[image], input_boxes=[boxes], return_tensors="pt")
            out = self.segmenter(**seg_in, multimask_output=False)
            masks = self.seg_processor.post_process_masks(out.pred_masks, seg_in["original_sizes"])[0]
        return [m[0].numpy().astype(bool) for m in masks]

    def instances(self, image: np.ndarray, ref: RefInput) -> list[Detection]:
        if not ref.word:
            raise NotLocalisable("no subject word for this reference (the detector's query)")
        boxes = self.detect(image, ref.word)
        if not boxes:
            return []
        return [Detection(tuple(b), m) for b, m in zip(boxes, self.segment(image, boxes))]


def parse_open_vocabulary(processor, text: str, size: tuple[int, int]) -> list[list[float]]:
    """The boxes of a Florence-2 `<OPEN_VOCABULARY_DETECTION>` answer, in pixels of an image of `size`
    (width, height). Florence-2 answers in 1000 bins per side; the kit's Florence-2 code keeps the
    dequantised box as floats, (bin + 0.5) * side / 1000, which `supervision.crop_image` rounds,
    whereas the native post-processor truncates them to integers; so the bins are read through the
    native parser at a 1000 x 1000 size (where it returns the bins themselves) and dequantised here
    as the kit does. An answer given as polygons has no box; the kit ignores it too."""
    task = Florence2Sam2Localiser.task
    bins = processor.post_process_generation(text, task=task, image_size=(1000, 1000))[task]["bboxes"]
    w, h = size
    return [[(b[0] + 0.5) * w / 1000, (b[1] + 0.5) * h / 1000, (b[2] + 0.5) * w / 1000, (b[3] + 0.5) * h / 1000]
            for b in bins]


LOCALISERS = {c.name: c for c in (MaskLocaliser, BackgroundLocaliser, OwlSamLocaliser, Florence2Sam2Localiser)}


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The mask's bounding box (x0, y0, x1, y1), end-exclusive."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def crop_on_white(image: np.ndarray, mask: np.ndarray, box=None) -> np.ndarray:
    """Every pixel outside the mask painted white, cut to `box` (default: the mask's bounding box).
    A box is rounded and sliced as XVerse's `supervision.crop_image` does (x0:x1, y0:y1)."""
    x0, y0, x1, y1 = mask_box(mask) if box is None else (int(v) for v in np.round(np.asarray(box, float)))
    out = np.where(mask[..., None], image, 255).astype(np.uint8)
    return np.ascontiguousarray(out[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)])


def min_instance_size(width: int) -> int:
    """XVerse's size floor for an image `width` px wide: `min_size = width // 20`."""
    return width // 20


def big_enough(crop: np.ndarray, min_size: int) -> bool:
    """XVerse's `ObjectDetector.get_instances` filter: a crop is dropped if its area is under
    min_size^2 or its short side under min_size // 4 (and, here, if it is empty)."""
    h, w = crop.shape[:2]
    return h * w > 0 and h * w >= min_size * min_size and min(h, w) >= min_size // 4


def pad_to_square(crop: np.ndarray) -> np.ndarray:
    """XVerse's `pad_to_square`: a white square of the long side, the crop pasted at
    ((side - w) // 2, (side - h) // 2)."""
    h, w = crop.shape[:2]
    side = max(h, w)
    out = np.full((side, side, 3), 255, np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    out[top:top + h, left:left + w] = crop
    return out


def xverse_crops(image: np.ndarray, found: list, max_instances: int = 3) -> tuple[list[np.ndarray], int]:
    """XVerse's IP-Sim crops of one generated image: each instance's mask on white cut to its box
    (a `Detection`'s detector box; a bare mask's bounding box), instances under the W/20 filter
    dropped, the first `max_instances` of the rest kept (in the localiser's order), each padded to a
    white square. Returns the crops and how many instances the size filter dropped."""
    min_size = min_instance_size(image.shape[1])
    crops, dropped = [], 0
    for inst in found:
        mask, box = (inst.mask, inst.box) if isinstance(inst, Detection) else (inst, None)
        if box is None and not mask.any():  # an empty bare mask has no box; a detector's box with an
            continue                         # empty mask is kept: the kit scores that all-white crop
        crop = crop_on_white(image, mask, box)
        if big_enough(crop, min_size):
            crops.append(crop)
        else:
            dropped += 1
    return [pad_to_square(c) for c in crops[:max_instances]], dropped
