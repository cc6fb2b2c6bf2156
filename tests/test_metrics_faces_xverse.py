"""ID-Sim `xverse` protocol: IR-SE50's published layout, the kit's steps on fixed inputs with
hand-checked intermediates (box expansion, crop, re-detection, alignment matrix and warp, 0 if no
face), and parity of our RetinaFace-R50 wrapper with facer's own detector on random weights."""
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from metrics.evaluate import evaluate
from metrics.faces import IdSim, model_key, protocol_of
from metrics.backbones.irse50 import IRSE50, load_irse50
from metrics.manifest import Item, RefInput
from metrics.registry import Context, MetricUnavailable

from metrics.backbones.xverse_faces import (ARCFACE_TEMPLATE, Detections, RetinaFaceR50, XVerseFaces, align, align_matrix,
                                  expand_box, face_crops)

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # facer imports timm.models.layers (deprecated)
        import facer
except ImportError as e:  # the test extra installs it (PyPI pyfacer)
    facer, FACER_MISSING = None, f"needs the facer toolkit (pip install pyfacer): {e}"
needs_facer = pytest.mark.skipif(facer is None, reason=FACER_MISSING if facer is None else "")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


# ---------------------------------------------------------------- IR-SE50


def published_irse50_layout() -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of `Backbone(50, 0.6, "ir_se")` (InsightFace_Pytorch / pSp model_irse.py),
    derived from the published code: input_layer = Conv(3->64, 3x3), BN, PReLU; body = 3/4/14/3 bottleneck_IR_SE
    units of depth 64/128/256/512 (shortcut conv+BN only where the channel count changes; res_layer = BN, Conv 3x3,
    PReLU, Conv 3x3, BN, SE(fc1, fc2 1x1, reduction 16)); output_layer = BN2d, Dropout, Flatten, Linear(512*7*7,
    512), BN1d."""
    def bn(prefix, c):
        return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}

    out = {"input_layer.0.weight": (64, 3, 3, 3), **bn("input_layer.1", 64), "input_layer.2.weight": (64,)}
    i = 0
    for cin, depth, units in ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)):
        for u in range(units):
            c_in = cin if u == 0 else depth
            p = f"body.{i}"
            if c_in != depth:
                out[f"{p}.shortcut_layer.0.weight"] = (depth, c_in, 1, 1)
                out.update(bn(f"{p}.shortcut_layer.1", depth))
            out.update(bn(f"{p}.res_layer.0", c_in))
            out[f"{p}.res_layer.1.weight"] = (depth, c_in, 3, 3)
            out[f"{p}.res_layer.2.weight"] = (depth,)
            out[f"{p}.res_layer.3.weight"] = (depth, depth, 3, 3)
            out.update(bn(f"{p}.res_layer.4", depth))
            out[f"{p}.res_layer.5.fc1.weight"] = (depth // 16, depth, 1, 1)
            out[f"{p}.res_layer.5.fc2.weight"] = (depth, depth // 16, 1, 1)
            i += 1
    out.update(bn("output_layer.0", 512))
    out.update({"output_layer.3.weight": (512, 25088), "output_layer.3.bias": (512,)})
    out.update(bn("output_layer.4", 512))
    return out


@pytest.fixture(scope="module")
def irse50():
    torch.manual_seed(0)
    return IRSE50().eval()


def test_irse50_state_dict_matches_the_published_checkpoint_layout(irse50):
    expected = published_irse50_layout()
    got = {k: tuple(v.shape) for k, v in irse50.state_dict().items()}
    assert len(irse50.body) == 24
    assert list(got) == list(expected)  # same names in the same order
    assert got == expected


def test_irse50_forward_is_512_and_l2_normalised(irse50):
    x = torch.rand(3, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        y = irse50(x)
    assert y.shape == (3, 512)
    assert torch.allclose(y.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(y[0], y[1])


def test_irse50_loads_weights_only_and_names_the_file(irse50, tmp_path):
    good = tmp_path / "model_ir_se50.pth"
    torch.save(irse50.state_dict(), good)
    net = load_irse50(good)
    x = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(net(x), irse50(x))
    pickled = tmp_path / "whole_module.pth"
    torch.save(irse50, pickled)  # a pickled nn.Module: needs more than weights_only=True allows
    with pytest.raises(ValueError, match=rf"id_sim\.weights: {pickled} cannot be read with torch\.load\(weights_only="):
        load_irse50(pickled)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(ValueError, match=rf"{wrong} is not an IR-SE50 checkpoint"):
        load_irse50(wrong)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent.pth")):
        load_irse50(tmp_path / "absent.pth")


# ---------------------------------------------------------------- the kit's steps, hand-checked


def test_box_expansion_by_hand():
    # centre (30, 60), size 40 x 80 -> 52 x 104
    assert expand_box((10, 20, 50, 100)) == pytest.approx((4, 8, 56, 112))
    assert expand_box((0, 0, 10, 10), 2.0) == pytest.approx((-5, -5, 15, 15))


class Scripted:
    """A detector with fixed answers per image size (the network's outputs are not under test here)."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def __call__(self, rgb):
        self.calls.append(rgb.shape[:2])
        rects, points = self.answers.get(rgb.shape[:2], ([], []))
        n = len(rects)
        return Detections(np.asarray(rects, np.float32).reshape(n, 4), np.asarray(points, np.float32).reshape(n, 5, 2),
                          np.linspace(0.99, 0.9, n).astype(np.float32))


def test_crops_are_the_rounded_expanded_boxes_black_outside():
    rgb = np.random.default_rng(0).integers(1, 255, (120, 100, 3), dtype=np.uint8)
    det = Scripted({(120, 100): ([[10, 20, 50, 100], [-5, 0, 35, 40], [10.2, 20, 50.6, 100]], [[0] * 10] * 3)})
    a, b, c = face_crops(rgb, det)
    assert np.array_equal(a, rgb[8:112, 4:56])  # (4, 8, 56, 112)
    # (-5, 0, 35, 40) -> centre (15, 20), 52 x 52 -> (-11, -6, 41, 46): 11 columns and 6 rows outside are black
    assert b.shape == (52, 52, 3) and not b[:6].any() and not b[:, :11].any()
    assert np.array_equal(b[6:, 11:], rgb[0:46, 0:41])
    # centre 30.4, half width 1.3 * 40.4 / 2 = 26.26 -> (4.14, 56.66) rounds to (4, 57)
    assert np.array_equal(c, rgb[8:112, 4:57])


def similarity_points(scale, angle_deg, t):
    """The template's 5 points under p -> scale * R(angle) p + t: an exact similarity, known by hand."""
    th = math.radians(angle_deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    return ARCFACE_TEMPLATE.astype(np.float64) @ rot.T * scale + np.asarray(t)


@needs_facer
def test_alignment_matrix_by_hand_and_against_skimage():
    # points = 2 R(30) template + (40, 25): the matrix is the inverse, [[c/s, sn/s, -(c tx + sn ty)/s],
    # [-sn/s, c/s, (sn tx - c ty)/s]] with c = cos 30 = 0.8660254, sn = 0.5, s = 2
    m = align_matrix(similarity_points(2.0, 30.0, (40.0, 25.0)))
    hand = np.array([[0.4330127, 0.25, -23.5705081], [-0.25, 0.4330127, -0.8253175], [0, 0, 1]])
    assert m == pytest.approx(hand, abs=1e-4)
    skimage = pytest.importorskip("skimage.transform", reason="scikit-image for the least-squares reference")
    noisy = similarity_points(1.7, -12.0, (61.0, 33.0)) + np.random.default_rng(1).normal(0, 2.0, (5, 2))
    ref = skimage.SimilarityTransform.from_estimate(noisy, ARCFACE_TEMPLATE.astype(np.float64)).params
    assert align_matrix(noisy) == pytest.approx(ref, abs=1e-4)


@needs_facer
def test_alignment_warp_by_hand():
    rgb = np.random.default_rng(2).integers(0, 256, (200, 220, 3), dtype=np.uint8)
    # scale 1, no rotation, integer shift (30, 20): output pixel centres land on source pixel centres; the
    # kit's uint8 cast truncates, so a value a hair below an integer (float error of the matrix) drops by 1
    out = align(rgb, similarity_points(1.0, 0.0, (30.0, 20.0)))
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    drop = rgb[20:132, 30:142].astype(int) - out
    assert set(np.unique(drop)) <= {0, 1} and (drop == 0).mean() > 0.5
    # scale 2: each output pixel centre falls between 2x2 source pixels -> their mean, truncated to uint8
    out = align(rgb, similarity_points(2.0, 0.0, (-10.0, -30.0)))
    src = rgb.astype(np.float64)
    x0, y0 = -10, -30  # output (x, y) centre -> source 2x + 1 - 10, 2y + 1 - 30
    for y, x in ((20, 20), (40, 60), (60, 33), (55, 55)):
        sy, sx = 2 * y + y0, 2 * x + x0
        mean = src[sy:sy + 2, sx:sx + 2].mean((0, 1))
        assert ((out[y, x] == np.floor(mean)) | (out[y, x] == np.floor(mean - 1e-3))).all(), (y, x)
    # outside the source image: zeros (grid_sample's zero padding)
    assert not align(rgb, similarity_points(1.0, 0.0, (-200.0, -200.0))).any()


def template_points(box):
    """Points that put the box's square onto the 112 template window: (x0, y0) + template * side / 112."""
    x0, y0, x1, _ = box
    return ARCFACE_TEMPLATE * ((x1 - x0) / 112) + np.array([x0, y0])


@needs_facer
def test_redetection_on_each_crop_and_embedding_of_the_aligned_face(irse50):
    rgb = np.random.default_rng(3).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    # two faces; the first crop (10,10,66,66) x1.3 -> (1.6, 1.6, 74.4, 74.4) -> (2, 2, 74, 74): 72 x 72
    # the second (100,100,140,140) -> (94, 94, 146, 146): 52 x 52, in which nothing is found again
    crop_face = (8, 8, 64, 64)  # in crop coordinates: source pixels (10..66)
    det = Scripted({(160, 160): ([[10, 10, 66, 66], [100, 100, 140, 140]], [[0] * 10] * 2),
                    (72, 72): ([crop_face], [template_points(crop_face)])})
    faces = XVerseFaces("id_sim", {}, detector=det, recogniser=irse50)
    gen = faces.generated(rgb)
    assert det.calls == [(160, 160), (72, 72), (52, 52)]  # the image, then each expanded crop
    assert len(gen) == 2 and gen[1] is None
    # the aligned face is the source square (10..66) at scale 2 (56 px -> 112 px) made by the kit's warp
    expected = align(rgb[2:74, 2:74], template_points(crop_face))
    x = torch.from_numpy(expected).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        assert gen[0] == pytest.approx(irse50(x)[0].numpy(), abs=1e-5)
    assert np.linalg.norm(gen[0]) == pytest.approx(1.0, abs=1e-5)
    assert XVerseFaces("id_sim", {}, detector=Scripted({}), recogniser=irse50).generated(rgb) == []


class ColourDetector:
    """A toy face detector: each 40x40 block whose border is magenta is a face, its 5 points at the
    template's place in the block; larger blocks score higher. Works on whole images and crops alike."""

    def __call__(self, rgb):
        mask = (rgb == (255, 0, 255)).all(-1)
        cols = np.flatnonzero(mask.any(0))
        rects = []
        for run in np.split(cols, np.flatnonzero(np.diff(cols) > 1) + 1) if len(cols) else []:
            rows = np.flatnonzero(mask[:, run].any(1))
            rects.append([run[0], rows[0], run[-1] + 1, rows[-1] + 1])
        rects.sort(key=lambda r: -(r[2] - r[0]))
        n = len(rects)
        return Detections(np.asarray(rects, np.float32).reshape(n, 4),
                          np.asarray([template_points(r) for r in rects], np.float32).reshape(n, 5, 2),
                          np.full(n, 0.95, np.float32))


def face_image(path, faces, size=(160, 200)):
    """An image with 40x40 'faces' (magenta border, seeded texture) at the given (x, y, seed)."""
    img = np.full((*size, 3), 90, np.uint8)
    for x, y, seed in faces:
        img[y:y + 40, x:x + 40] = (255, 0, 255)
        img[y + 1:y + 39, x + 1:x + 39] = np.random.default_rng(seed).integers(0, 200, (38, 38, 3), dtype=np.uint8)
    Image.fromarray(img).save(path)
    return path


@needs_facer
def test_id_sim_xverse_protocol_rows(tmp_path, irse50):
    a = face_image(tmp_path / "a.png", [(30, 40, 1)])
    a_moved = face_image(tmp_path / "a_moved.png", [(120, 90, 1)])
    b = face_image(tmp_path / "b.png", [(30, 40, 2)])
    ab = face_image(tmp_path / "ab.png", [(10, 10, 2), (130, 100, 1)])
    none = face_image(tmp_path / "none.png", [])
    face, blank = RefInput(a, word="man", category="human"), RefInput(none, word="man", category="human")
    items = [Item("same", a_moved, "a man", [face]), Item("other", b, "a man", [face]),
             Item("two", ab, "a man", [face]), Item("noface", none, "a man", [face]),
             Item("noref", a, "a man", [blank]), Item("object", a, "a cup", [RefInput(a, category="object")])]
    cfg = {"id_sim": {"protocol": "xverse"}}
    ctx = Context(cfg)
    ctx.model(model_key(cfg["id_sim"]), lambda: XVerseFaces("id_sim", {}, detector=ColourDetector(), recogniser=irse50))
    table, agg, _ = evaluate(items, cfg, ["ID-Sim"], ctx=ctx)
    v = table.set_index("id")
    assert v.loc["same", "value"] == pytest.approx(100.0, abs=1e-3)  # same face elsewhere in the image
    assert v.loc["other", "value"] < 99
    assert v.loc["two", "value"] == pytest.approx(100.0, abs=1e-3)  # max over the generated faces
    assert v.loc["noface", "value"] == 0.0 and v.loc["noface", "reason"] == "no face detected"
    # XVerse scores a reference without a face 0 (dlib / insightface: NaN)
    assert v.loc["noref", "value"] == 0.0 and v.loc["noref", "reason"] == "no face detected in the reference image"
    assert math.isnan(v.loc["object", "value"])
    assert set(v["protocol"]) == {"xverse"}
    mean = agg[agg.statistic.str.startswith("mean over (image")].iloc[0]
    assert mean["n"] == 5 and mean["n_nan"] == 1


@needs_facer
def test_id_sim_xverse_zero_when_no_crop_has_a_face_again(tmp_path, irse50):
    a = face_image(tmp_path / "a.png", [(30, 40, 1)])
    detect = ColourDetector()
    full_only = lambda rgb: detect(rgb) if rgb.shape[:2] == (160, 200) else detect(rgb[:0])  # noqa: E731
    cfg = {"id_sim": {"protocol": "xverse"}}
    ctx = Context(cfg)
    ctx.model(model_key(cfg["id_sim"]), lambda: XVerseFaces("id_sim", {}, detector=full_only, recogniser=irse50))
    v = evaluate([Item("x", a, "a man", [RefInput(a, category="human")])], cfg, ["ID-Sim"], ctx=ctx)[0]
    assert v["value"].tolist() == [0.0]
    assert v["reason"].tolist() == ["no face detected again in the expanded face crops"]


def test_protocol_names_and_the_old_backend_key():
    assert IdSim.protocols[0] == "xverse" and set(IdSim.protocols) == {"xverse", "insightface", "dlib"}
    assert protocol_of({}) == "xverse"
    assert protocol_of({"protocol": "insightface"}) == "insightface"
    assert protocol_of({"protocol": "xverse", "backend": "dlib"}) == "dlib"  # an old config merged over the profile
    with pytest.raises(MetricUnavailable, match=r"id_sim\.protocol: 'arcface' is not one of xverse, insightface, dlib"):
        protocol_of({"protocol": "arcface"})
    with pytest.raises(MetricUnavailable, match=r"id_sim\.detector is not set"):
        XVerseFaces("id_sim", {"protocol": "xverse"})


# ---------------------------------------------------------------- facer parity (random weights)


@pytest.fixture(scope="module")
def retinaface_file(tmp_path_factory):
    from facer.face_detection.retinaface import RetinaFace, cfg_re50

    torch.manual_seed(0)
    net = RetinaFace(cfg=cfg_re50, phase="test")
    with torch.no_grad():  # tame the random heads so that scores spread around the threshold
        for head in (*net.ClassHead, *net.BboxHead, *net.LandmarkHead):
            head.conv1x1.weight.mul_(1e-3)
    path = tmp_path_factory.mktemp("retinaface") / "Resnet50_Final.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)  # as the published file: "module." keys
    return path


@needs_facer
def test_retinaface_wrapper_matches_facer_detector(retinaface_file):
    from facer.face_detection import RetinaFaceDetector

    rgb = np.random.default_rng(4).integers(0, 256, (128, 160, 3), dtype=np.uint8)
    ours = RetinaFaceR50(retinaface_file, threshold=0.5)(rgb)
    theirs = RetinaFaceDetector("resnet50", model_path=str(retinaface_file), threshold=0.5)
    with torch.no_grad():
        d = theirs(facer.hwc2bchw(torch.from_numpy(rgb)))
    assert 0 < len(ours.scores) == len(d["scores"])
    assert np.array_equal(ours.rects, d["rects"].numpy())
    assert np.array_equal(ours.points, d["points"].numpy())
    assert np.array_equal(ours.scores, d["scores"].numpy())
    assert (np.diff(ours.scores) <= 0).all()  # highest score first: the kit's [:1] is the best face


@needs_facer
def test_xverse_protocol_from_weight_files(retinaface_file, irse50, tmp_path):
    weights = tmp_path / "model_ir_se50.pth"
    torch.save(irse50.state_dict(), weights)
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(img)
    items = [Item("x", img, "a man", [RefInput(img, category="human")])]
    sec = {"protocol": "xverse", "detector": str(retinaface_file), "weights": str(weights), "device": "cpu"}
    table = evaluate(items, {"id_sim": {**sec, "threshold": 1.01}}, ["ID-Sim"])[0]  # nothing passes 1.01
    assert table["value"].tolist() == [0.0] and table["reason"].tolist() == ["no face detected"]
    row = table.iloc[0]
    assert row["protocol"] == "xverse" and "IR-SE50" in row["model"] and str(weights) in row["weights"]
    # a threshold just under the 3rd best random score: 3 faces, each cropped, re-detected and embedded
    scores = RetinaFaceR50(retinaface_file, threshold=0.5)(np.asarray(Image.open(img))).scores
    value = evaluate(items, {"id_sim": {**sec, "threshold": float(scores[2]) - 1e-7}}, ["ID-Sim"])[0]["value"].iloc[0]
    assert -100.0 <= value <= 100.0 and not math.isnan(value)
    with pytest.raises(MetricUnavailable, match=rf"id_sim\.weights: {tmp_path}/absent\.pth not found"):
        XVerseFaces("id_sim", {**sec, "weights": str(tmp_path / "absent.pth")})


@needs_facer
def test_detector_weights_load_weights_only_and_name_the_file(tmp_path):
    from facer.face_detection.retinaface import RetinaFace, cfg_re50

    pickled = tmp_path / "Resnet50_Final.pth"
    torch.save(RetinaFace(cfg=cfg_re50, phase="test"), pickled)  # a whole pickled module, not a state dict
    with pytest.raises(ValueError, match=rf"id_sim\.detector: {pickled} cannot be read with torch\.load\(weights_only="):
        RetinaFaceR50(pickled)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2)}, wrong)
    with pytest.raises(ValueError, match=rf"{wrong} is not a RetinaFace-R50 checkpoint"):
        RetinaFaceR50(wrong)


def test_without_facer_the_xverse_protocol_is_unavailable_with_the_install_hint(tmp_path, monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "facer" or m.startswith("facer.")] + ["facer"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if pyfacer were not installed
    det, rec = tmp_path / "Resnet50_Final.pth", tmp_path / "model_ir_se50.pth"
    det.write_bytes(b"x"), rec.write_bytes(b"x")
    with pytest.raises(MetricUnavailable, match=r"id_sim: the xverse protocol needs the facer toolkit \(pip install pyf"):
        XVerseFaces("id_sim", {"detector": str(det), "weights": str(rec)})
