"""ID-Sim: face identity similarity under three named protocols (`id_sim.protocol`).

- `xverse` (default): XVerse's evaluation kit, RetinaFace-R50 (facer) + ArcFace IR-SE50, each
  generated face's box expanded 1.3x and detected again, 5-point alignment to 112 px; see
  `metrics.backbones.xverse_faces`. The score is the maximum cosine x100 over the generated faces, and 0
  (a real 0 with its reason) when no face is found in the generated image or in the reference.
- `insightface`: `FaceAnalysis` on a local model pack `<model_root>/models/<model_name>/`
  (buffalo_l or antelopev2): SCRFD detection, 5-point `norm_crop` to 112x112, ArcFace.
- `dlib`: HOG frontal detector, 5-point shape predictor and dlib's ResNet face descriptor
  from the PyPI `face-recognition-models` files (reachable offline). Its cosines between
  different people are high (about 85-97), so compare dlib ID-Sim only with dlib ID-Sim.
For `insightface` and `dlib` the reference's largest face is compared with every generated face
(max cosine x100, 0 if the generated image has none) and a reference without a face is NaN.
Non-human references are NaN with a reason under every protocol. The benchmark mean is over
(image, human reference) pairs. The old key `backend` still names the protocol (`insightface`
or `dlib`) when it is set.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from mosaic.data.records import load_image

from .manifest import Item
from .registry import Context, Metric, MetricUnavailable, Row, cosine100, register, section
from .backbones.xverse_faces import XVerseFaces

DLIB_FILES = ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat")


def _face_recognition_models_dir() -> Path | None:
    # The package's __init__ imports pkg_resources (absent here): locate it without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibFaces:
    def __init__(self, key: str, sec: dict[str, Any]):
        import dlib

        folder = Path(sec["dlib_models"]).expanduser() if sec.get("dlib_models") else _face_recognition_models_dir()
        missing = [f for f in DLIB_FILES if folder is None or not (folder / f).is_file()]
        if missing:
            raise MetricUnavailable(f"{key}.dlib_models: {', '.join(missing)} not found in "
                                    f"{folder or 'the face-recognition-models package (not installed)'}")
        self.upsample = int(sec.get("upsample", 1))
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(str(folder / DLIB_FILES[0]))
        self.encoder = dlib.face_recognition_model_v1(str(folder / DLIB_FILES[1]))
        self.id = f"dlib:{folder}"
        self.model = f"dlib HOG frontal detector (upsample {self.upsample}) + 5-point landmarks + ResNet descriptor"
        self.weights = str(folder)

    def faces(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Descriptors of the faces found, largest first."""
        rgb = np.ascontiguousarray(rgb)
        dets = sorted(self.detector(rgb, self.upsample), key=lambda r: r.area(), reverse=True)
        return [np.asarray(self.encoder.compute_face_descriptor(rgb, self.shape(rgb, d))) for d in dets]


class InsightFaces:
    def __init__(self, key: str, sec: dict[str, Any]):
        name, root = sec.get("model_name", "antelopev2"), sec.get("model_root")
        if not root:
            raise MetricUnavailable(f"{key}.model_root is not set: give the folder that holds "
                                    f"models/{name}/ (the insightface {name} pack)")
        pack = Path(root).expanduser() / "models" / name
        if not pack.is_dir() or not any(pack.glob("*.onnx")):
            raise MetricUnavailable(f"{key}.model_root: no insightface pack at {pack} "
                                    f"(unpack {name} there, or fix {key}.model_root / {key}.model_name)")
        from insightface.app import FaceAnalysis

        providers = sec.get("providers") or ["CPUExecutionProvider"]
        # An existing folder as `name` makes FaceAnalysis load it directly (never download).
        self.app = FaceAnalysis(name=str(pack.resolve()), allowed_modules=["detection", "recognition"],
                                providers=providers)
        if "recognition" not in self.app.models:
            raise MetricUnavailable(f"{key}.model_root: {pack} has no recognition (ArcFace) model")
        det = int(sec.get("det_size", 640))
        self.app.prepare(ctx_id=0, det_size=(det, det))
        self.id = f"insightface:{pack}"
        self.model = f"insightface FaceAnalysis {name} (detection {det}px, norm_crop 112, ArcFace)"
        self.weights = str(pack)

    def faces(self, rgb: np.ndarray) -> list[np.ndarray]:
        found = self.app.get(np.ascontiguousarray(rgb[..., ::-1]))  # insightface expects BGR
        found.sort(key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])), reverse=True)
        return [f.normed_embedding for f in found]


BACKENDS = {"xverse": XVerseFaces, "insightface": InsightFaces, "dlib": DlibFaces}  # by protocol
PROCEDURES = {
    "xverse": "RetinaFace-R50 faces of the generated image, boxes expanded 1.3x and re-detected, 5-point "
              "similarity alignment to 112 px, IR-SE50 cosine x100 with the reference's top face; max over "
              "generated faces; 0 if no face in the generated image, its crop or the reference (XVerse kit)",
    "insightface": "largest reference face; max cosine x100 over generated faces; 0 if none; NaN if the "
                   "reference has no face (SCRFD + ArcFace)",
    "dlib": "largest reference face; max cosine x100 over generated faces; 0 if none; NaN if the reference "
            "has no face (dlib HOG + ResNet descriptor)",
}


def protocol_of(sec: dict[str, Any], key: str = "id_sim") -> str:
    """The section's protocol: `backend` (the old key) when set, else `protocol`, else xverse."""
    name = sec.get("backend") or sec.get("protocol") or "xverse"
    if name not in BACKENDS:
        field = "backend" if sec.get("backend") else "protocol"
        raise MetricUnavailable(f"{key}.{field}: {name!r} is not one of {', '.join(BACKENDS)}")
    return name


def model_key(sec: dict[str, Any], key: str = "id_sim") -> tuple:
    """The face models' key in the evaluation's `Context` (one load per section)."""
    return ("faces", protocol_of(sec, key), str(sorted(sec.items())))


def load_faces(cfg: dict[str, Any], ctx: Context, key: str = "id_sim"):
    sec = section(cfg, key)
    return ctx.model(model_key(sec, key), lambda: BACKENDS[protocol_of(sec, key)](key, sec))


@register
class IdSim(Metric):
    name = "ID-Sim"
    inputs = ("image", "references")
    config_key = "id_sim"
    protocols = tuple(BACKENDS)
    model_keys = ("protocol", "backend", "detector", "weights", "model_root", "model_name", "dlib_models")

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.faces = load_faces(cfg, ctx, self.config_key)

    @classmethod
    def protocol_in(cls, cfg: dict[str, Any]) -> str:
        return protocol_of(section(cfg, cls.config_key), cls.config_key)

    def identity(self) -> dict[str, str]:
        return {"model": self.faces.model, "weights": self.faces.weights, "protocol": self.protocol,
                "procedure": PROCEDURES[self.protocol],
                "world": str(self.cfg[self.config_key].get("world", ""))}

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        xverse = self.protocol == "xverse"
        gen_fn = self.faces.generated if xverse else self.faces.faces
        ref_fn = self.faces.reference if xverse else (lambda im: next(iter(self.faces.faces(im)), None))
        rows = []
        for i, (it, img) in enumerate(zip(items, images)):
            humans = [r for r in it.references if r.category == "human"]
            gen = self.ctx.cached(f"{self.faces.id}|generated", [str(it.image)],
                                  lambda _: [gen_fn(img)])[0] if humans else []
            for j, r in enumerate(it.references):
                if r.category != "human":
                    rows.append(Row(i, j, float("nan"), f"not a human reference (category {r.category or 'unknown'})"))
                    continue
                ref = self.ctx.cached(f"{self.faces.id}|references", [str(r.image)],
                                      lambda keys: [ref_fn(load_image(k)) for k in keys])[0]
                if ref is None and not xverse:
                    rows.append(Row(i, j, float("nan"), "no face detected in the reference image"))
                elif not gen:
                    rows.append(Row(i, j, 0.0, "no face detected"))
                elif ref is None:
                    rows.append(Row(i, j, 0.0, "no face detected in the reference image"))
                elif all(g is None for g in gen):
                    rows.append(Row(i, j, 0.0, "no face detected again in the expanded face crops"))
                else:  # a crop without a face scores 0 in the kit's max
                    rows.append(Row(i, j, max(0.0 if g is None else float(cosine100(g, ref)) for g in gen)))
        return rows
