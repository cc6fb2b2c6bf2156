"""ID-Sim: the dlib protocol on the XVerseBench faces, and insightface's real code path on tiny ONNX models
(the xverse protocol: tests/test_metrics_faces_xverse.py)."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from metrics.evaluate import evaluate
from metrics.faces import DlibFaces, InsightFaces
from metrics.manifest import Item, RefInput
from metrics.registry import MetricUnavailable, cosine100

HUMANS = sorted((Path(__file__).resolve().parents[1] / ".." / "shared" / "benchmarks" / "xversebench" / "human").glob("*.jpg"))
AUGMENTATIONS = {
    "flip": ImageOps.mirror,
    "brightness": lambda im: ImageEnhance.Brightness(im).enhance(1.35),
    "rescale": lambda im: im.resize((int(im.width * 0.6), int(im.height * 0.6)), Image.BICUBIC),
}


@pytest.fixture(scope="module")
def dlib_faces():
    return DlibFaces("id_sim", {"backend": "dlib"})


@pytest.mark.slow
@pytest.mark.skipif(len(HUMANS) != 20, reason="needs ../shared/benchmarks/xversebench/human (20 images)")
def test_dlib_same_face_beats_other_identities_for_all_20(dlib_faces):
    faces = [dlib_faces.faces(np.asarray(Image.open(p).convert("RGB"))) for p in HUMANS]
    assert all(faces), "every XVerseBench identity image has a detectable face"
    emb = np.stack([f[0] for f in faces])
    others = cosine100(emb[:, None], emb[None])  # [20, 20]
    np.fill_diagonal(others, -np.inf)
    for name, aug in AUGMENTATIONS.items():
        for i, p in enumerate(HUMANS):
            found = dlib_faces.faces(np.asarray(aug(Image.open(p).convert("RGB"))))
            assert found, f"{p.name} ({name}): no face after augmentation"
            same = float(cosine100(emb[i], found[0]))
            # "clearly higher": at least 0.5 points (x100 scale) above its closest other identity
            assert same > others[i].max() + 0.5, f"{p.name} ({name}): {same:.2f} vs {others[i].max():.2f}"


@pytest.mark.skipif(len(HUMANS) != 20, reason="needs ../shared/benchmarks/xversebench/human")
def test_dlib_id_sim_metric_protocol(tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (120, 160, 200)).save(blank)
    face = RefInput(HUMANS[0], word="boy", category="human")
    items = [Item("same", HUMANS[0], "a boy", [face]),
             Item("other", HUMANS[1], "a man", [face]),
             Item("noface", blank, "a boy", [face]),
             Item("object", HUMANS[0], "a cup", [RefInput(blank, word="cup", category="object")]),
             Item("noref", HUMANS[0], "a boy", [RefInput(blank, word="boy", category="human")])]
    table, agg, _ = evaluate(items, {"id_sim": {"protocol": "dlib"}}, ["ID-Sim"])
    v = table.set_index("id")
    assert v.loc["same", "value"] == pytest.approx(100.0, abs=1e-3)
    assert 0 < v.loc["other", "value"] < 99
    assert v.loc["noface", "value"] == 0.0 and v.loc["noface", "reason"] == "no face detected"
    assert math.isnan(v.loc["object", "value"]) and "not a human reference" in v.loc["object", "reason"]
    # under dlib (unlike xverse) a reference without a face is NaN
    assert math.isnan(v.loc["noref", "value"]) and v.loc["noref", "reason"] == "no face detected in the reference image"
    mean = agg[agg.statistic.str.startswith("mean over (image")].iloc[0]
    assert mean["n"] == 3 and mean["n_nan"] == 2  # the protocol 0 counts; the NaNs do not
    assert "dlib" in v.loc["same", "model"] and set(v["protocol"]) == {"dlib"}


# ---------------------------------------------------------------- insightface on tiny ONNX models

DET_SIZE = 128
# insightface's 5-point ArcFace template (112 px), as offsets from its centre
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                     [70.7299, 92.2041]]) - 56.0


class TinyScrfd(torch.nn.Module):
    """SCRFD's interface (9 outputs: scores, boxes, keypoints at strides 8/16/32, 2 anchors):
    only the stride-32 anchors fire, where the image is not dark; each predicts a 96 px box
    and the ArcFace template's 5 points around its centre."""

    def __init__(self):
        super().__init__()
        self.register_buffer("kps", torch.tensor(TEMPLATE.reshape(1, 10) * (96 / 112), dtype=torch.float32))

    def forward(self, x):
        scores, boxes, kps = [], [], []
        for s in (8, 16, 32):
            bright = F.avg_pool2d(x, s).mean(1, keepdim=True)  # [1, 1, h, w]; x = (pixel - 127.5) / 128
            logit = 12 * (bright + 0.5) if s == 32 else torch.full_like(bright, -30.0)
            n = bright.shape[2] * bright.shape[3]
            score = torch.sigmoid(logit).permute(0, 2, 3, 1).reshape(n, 1)
            scores.append(score.repeat_interleave(2, 0))
            ones = torch.ones(2 * n, 1) + 0 * scores[-1]
            boxes.append(ones * torch.full((1, 4), 48.0 / s))
            kps.append(ones * self.kps / s)
        return (*scores, *boxes, *kps)


class TinyArcFace(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 8 * 8, 64)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(x, 8).flatten(1))


def export_pack(root: Path, name: str = "tinypack") -> Path:
    pack = root / "models" / name
    pack.mkdir(parents=True)
    names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    torch.onnx.export(TinyScrfd(), (torch.zeros(1, 3, DET_SIZE, DET_SIZE),), str(pack / "det_tiny.onnx"),
                      dynamo=False, input_names=["input.1"], output_names=names)
    torch.onnx.export(TinyArcFace(), (torch.zeros(1, 3, 112, 112),), str(pack / "w600k_tiny.onnx"), dynamo=False,
                      input_names=["input.1"], output_names=["embedding"], dynamic_axes={"input.1": {0: "n"}, "embedding": {0: "n"}})
    return pack


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_insightface_real_path_on_tiny_onnx(tmp_path):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    export_pack(tmp_path)
    backend = InsightFaces("id_sim", {"backend": "insightface", "model_root": str(tmp_path),
                                      "model_name": "tinypack", "det_size": DET_SIZE})
    # FaceAnalysis routed the exported files by their shapes, as it does for buffalo_l / antelopev2
    assert isinstance(backend.app.models["detection"], SCRFD)
    assert isinstance(backend.app.models["recognition"], ArcFaceONNX)
    rng = np.random.default_rng(0)
    a = rng.integers(60, 255, (150, 150, 3), dtype=np.uint8)
    b = rng.integers(60, 255, (150, 150, 3), dtype=np.uint8)
    faces = backend.app.get(np.ascontiguousarray(a[..., ::-1]))
    assert faces and faces[0].kps.shape == (5, 2) and faces[0].normed_embedding.shape == (64,)
    assert backend.faces(np.zeros((150, 150, 3), np.uint8)) == []

    for name, im in {"a": a, "b": b, "dark": np.zeros_like(a)}.items():
        Image.fromarray(im).save(tmp_path / f"{name}.png")
    ref = [RefInput(tmp_path / "a.png", word="man", category="human")]
    items = [Item(n, tmp_path / f"{n}.png", "a man", ref) for n in ("a", "b", "dark")]
    cfg = {"id_sim": {"backend": "insightface", "model_root": str(tmp_path), "model_name": "tinypack",
                      "det_size": DET_SIZE}}
    v = evaluate(items, cfg, ["ID-Sim"])[0].set_index("id")
    assert set(v["protocol"]) == {"insightface"}  # the old `backend` key names the protocol
    assert v.loc["a", "value"] == pytest.approx(100.0, abs=1e-3)
    assert v.loc["b", "value"] < 99.99
    assert v.loc["dark", "value"] == 0.0 and v.loc["dark", "reason"] == "no face detected"


def test_insightface_fails_clearly_without_model_root(tmp_path):
    with pytest.raises(MetricUnavailable, match=r"id_sim\.model_root is not set"):
        InsightFaces("id_sim", {"backend": "insightface", "model_name": "antelopev2"})
    with pytest.raises(MetricUnavailable, match=rf"no insightface pack at {tmp_path}/models/antelopev2"):
        InsightFaces("id_sim", {"backend": "insightface", "model_root": str(tmp_path), "model_name": "antelopev2"})
