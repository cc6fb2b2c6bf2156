"""ID-Sim: face identity similarity, XVerse protocol, with two face backends.

Protocol: for each human reference, take the largest face found in the reference image;
the score is the maximum cosine x100 between its embedding and the embeddings of all faces
found in the generated image, 0 if the generated image has no face (a real 0, reason
"no face detected"). Non-human references get NaN with a reason; so does a reference image
in which no face is found. The benchmark mean is over (image, human reference) pairs.

Backends (`id_sim.backend`):
- `insightface`: `FaceAnalysis` on a local model pack `<model_root>/models/<model_name>/`
  (buffalo_l or antelopev2): SCRFD detection, 5-point `norm_crop` to 112x112, ArcFace.
- `dlib`: HOG frontal detector, 5-point shape predictor and dlib's ResNet face descriptor
  from the PyPI `face-recognition-models` files (reachable offline). Its cosines between
  different people are high (about 85-97), so compare dlib ID-Sim only with dlib ID-Sim.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from mosaic.data.sample import load_image

from .manifest import Item
from .registry import Context, Metric, MetricUnavailable, Row, cosine100, register, section

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


BACKENDS = {"dlib": DlibFaces, "insightface": InsightFaces}


def load_faces(cfg: dict[str, Any], ctx: Context, key: str = "id_sim"):
    sec = section(cfg, key)
    backend = sec.get("backend", "insightface")
    if backend not in BACKENDS:
        raise MetricUnavailable(f"{key}.backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    return ctx.model(("faces", backend, str(sorted(sec.items()))), lambda: BACKENDS[backend](key, sec))


@register
class IdSim(Metric):
    name = "ID-Sim"
    inputs = ("image", "references")
    config_key = "id_sim"
    model_keys = ("backend", "model_root", "model_name", "dlib_models")

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.faces = load_faces(cfg, ctx, self.config_key)

    def identity(self) -> dict[str, str]:
        return {"model": self.faces.model, "weights": self.faces.weights,
                "protocol": "largest reference face; max cosine x100 over generated faces; 0 if none (XVerse)",
                "world": str(self.cfg[self.config_key].get("world", ""))}

    def score(self, items: list[Item], images: list[np.ndarray]) -> list[Row]:
        rows = []
        for i, (it, img) in enumerate(zip(items, images)):
            humans = [r for r in it.references if r.category == "human"]
            gen = self.ctx.cached(f"{self.faces.id}|generated", [str(it.image)],
                                  lambda _: [self.faces.faces(img)])[0] if humans else []
            for j, r in enumerate(it.references):
                if r.category != "human":
                    rows.append(Row(i, j, float("nan"), f"not a human reference (category {r.category or 'unknown'})"))
                    continue
                ref = self.ctx.cached(f"{self.faces.id}|references", [str(r.image)],
                                      lambda keys: [self.faces.faces(load_image(k)) for k in keys])[0]
                if not ref:
                    rows.append(Row(i, j, float("nan"), "no face detected in the reference image"))
                elif not gen:
                    rows.append(Row(i, j, 0.0, "no face detected"))
                else:
                    rows.append(Row(i, j, float(cosine100(np.stack(gen), ref[0][None]).max())))
        return rows
