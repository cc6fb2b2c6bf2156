"""ID-Sim's `xverse` protocol: the face pipeline of XVerse's evaluation kit, step by step.

As XVerse's `eval/tools/face_id.py` + `face_utils/face.py` + `idip_face_score.py` do it:
1. RetinaFace-R50 (the `facer` toolkit, PyPI `pyfacer`; threshold 0.8) finds the faces of the
   generated image; each box is expanded 1.3x about its centre and cropped (PIL `crop`: the box is
   rounded, outside the image is black).
2. Each crop, and the whole reference image, is detected again; the highest-scoring face's 5 points
   are aligned by a least-squares similarity onto the ArcFace 112x112 template (facer's
   `get_face_align_matrix` + bilinear `grid_sample`, cast to uint8). No face: no embedding.
3. ArcFace IR-SE50 embeds the aligned face ([-1, 1] input); the score is cosine x100, the maximum
   over the generated faces, and 0 when the generated image, its crop or the reference has no face.
Detector weights (facer's `Resnet50_Final.pth`) and recogniser weights (`model_ir_se50.pth`) come
from user paths, read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .irse50 import load_irse50, load_state_dict
from ..registry import MetricUnavailable

EXPAND = 1.3  # XVerse's box expansion before re-detection
ALIGN_SIZE = (112, 112)
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.729904, 92.2041]], np.float32)  # 112 px, as the kit gives it


@dataclass
class Detections:
    rects: np.ndarray  # [N, 4] x1, y1, x2, y2; highest score first
    points: np.ndarray  # [N, 5, 2] x, y: left eye, right eye, nose, left and right mouth corners
    scores: np.ndarray  # [N]


Detector = Callable[[np.ndarray], Detections]  # RGB uint8 [H, W, 3] -> detections


class RetinaFaceR50:
    """facer's RetinaFace-R50 network and post-processing, with weights from a local file."""

    def __init__(self, path: str | Path, threshold: float = 0.8, device: str = "cpu", key: str = "id_sim.detector"):
        from facer.face_detection.retinaface import RetinaFace, cfg_re50

        self.net = RetinaFace(cfg=cfg_re50, phase="test")
        sd = load_state_dict(path, key)
        missing = sorted(set(self.net.state_dict()) - set(sd))
        if missing:
            raise ValueError(f"{key}: {path} is not a RetinaFace-R50 checkpoint (missing {missing[:3]}, "
                             f"{len(missing)} in all)")
        self.net.load_state_dict(sd, strict=False)  # as facer loads it (extra keys ignored)
        self.net.eval().to(device)
        self.threshold, self.device = float(threshold), device

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> Detections:
        from facer import hwc2bchw
        from facer.face_detection.retinaface import batch_detect

        # uint8 bchw in facer's memory layout (the layout picks the conv kernels: bitwise parity needs it)
        x = hwc2bchw(torch.from_numpy(np.ascontiguousarray(rgb))).to(self.device)
        d = batch_detect(self.net, x.clone(), threshold=self.threshold)
        if d["rects"].numel() == 0:
            return Detections(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32))
        return Detections(d["rects"].cpu().numpy(), d["points"].cpu().numpy(), d["scores"].cpu().numpy())


def expand_box(box, factor: float = EXPAND) -> tuple[float, float, float, float]:
    """The box scaled by `factor` about its centre (not clipped to the image)."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, factor * (x2 - x1) / 2, factor * (y2 - y1) / 2
    return cx - hw, cy - hh, cx + hw, cy + hh


def face_crops(rgb: np.ndarray, detect: Detector) -> list[np.ndarray]:
    """Step 1: the expanded crop of every face found in the generated image."""
    im = Image.fromarray(np.ascontiguousarray(rgb))
    return [np.asarray(im.crop(expand_box(r))) for r in detect(rgb).rects]


def align_matrix(points: np.ndarray) -> np.ndarray:
    """3x3 similarity taking the 5 image points onto the ArcFace template (facer's least squares)."""
    from facer.transform import get_face_align_matrix

    pts = torch.as_tensor(np.asarray(points, np.float32)).reshape(1, 5, 2)
    # the kit's target points for tight_warp_face (scale 1): (template / 112 - 0.5) / 1 + 0.5, times 112
    target = ((torch.from_numpy(ARCFACE_TEMPLATE) / 112.0 - torch.tensor([0.5, 0.5])) / 1 + torch.tensor([0.5, 0.5]))
    return get_face_align_matrix(pts, ALIGN_SIZE, target_pts=target * torch.tensor(ALIGN_SIZE)).numpy()[0]


def align(rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Step 2: the 112x112 RGB uint8 face, warped as the kit's `tight_warp_face` does."""
    from facer import hwc2bchw
    from facer.transform import make_tanh_warp_grid

    matrix = torch.from_numpy(align_matrix(points))[None]
    grid = make_tanh_warp_grid(matrix, 0.0, ALIGN_SIZE, rgb.shape[:2])
    img = hwc2bchw(torch.from_numpy(np.ascontiguousarray(rgb))).float()
    out = F.grid_sample(img, grid, "bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).to(torch.uint8).numpy()  # uint8 cast truncates, as the kit's does


def aligned_face(rgb: np.ndarray, detect: Detector) -> np.ndarray | None:
    """The aligned highest-scoring face of an image (a crop or a reference), None if none is found."""
    found = detect(rgb)
    return align(rgb, found.points[0]) if len(found.scores) else None


class XVerseFaces:
    """RetinaFace-R50 + IR-SE50 under the kit's steps; embeddings are L2-normalised 512-d vectors."""

    FILES = {"detector": "facer RetinaFace-R50 Resnet50_Final.pth", "weights": "ArcFace model_ir_se50.pth"}

    def __init__(self, key: str, sec: dict[str, Any], detector: Detector | None = None, recogniser=None):
        """Models from `sec` (`detector`, `weights`, `threshold`, `device`); tests may pass their own."""
        device = sec.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        paths, threshold = {k: sec.get(k) for k in self.FILES}, float(sec.get("threshold", 0.8))
        for k, what in self.FILES.items():
            if (detector if k == "detector" else recogniser) is not None:
                continue
            if not paths[k]:
                raise MetricUnavailable(f"{key}.{k} is not set: give the path of {what}")
            if not Path(paths[k]).expanduser().is_file():
                raise MetricUnavailable(f"{key}.{k}: {paths[k]} not found ({what})")
        try:
            self.detect = detector or RetinaFaceR50(paths["detector"], threshold, device, f"{key}.detector")
        except ImportError as e:
            raise MetricUnavailable(f"{key}: the xverse protocol needs the facer toolkit (pip install pyfacer): "
                                    f"{e}") from None
        self.recogniser = (recogniser or load_irse50(paths["weights"], f"{key}.weights")).to(device)
        self.device = device
        self.id = f"xverse:{paths['detector']}:{paths['weights']}:{threshold}"
        self.model = f"RetinaFace-R50 (facer, threshold {threshold}) + ArcFace IR-SE50"
        self.weights = f"detector={paths['detector']}; recogniser={paths['weights']}"

    @torch.no_grad()
    def embed(self, face: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(face).permute(2, 0, 1)[None].float().div(255).sub(0.5).div(0.5)  # ToTensor + Normalize(.5)
        return self.recogniser(x.to(self.device))[0].float().cpu().numpy()

    def identity_embedding(self, rgb: np.ndarray) -> np.ndarray | None:
        face = aligned_face(rgb, self.detect)
        return None if face is None else self.embed(face)

    def generated(self, rgb: np.ndarray) -> list[np.ndarray | None]:
        """One entry per face found in the generated image: its embedding, None if its crop has no face."""
        return [self.identity_embedding(c) for c in face_crops(rgb, self.detect)]

    def reference(self, rgb: np.ndarray) -> np.ndarray | None:
        return self.identity_embedding(rgb)
