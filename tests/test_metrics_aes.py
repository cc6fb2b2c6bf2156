"""AES parity with the `aesthetic-predictor-v2-5` package: the same tiny random SigLIP and head, the same images;
our value equals the package's score x10 (XVerse's scale) within 1e-4 points."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image

from metrics.evaluate import evaluate
from metrics.manifest import Item
from metrics.registry import MetricUnavailable

TOL = 1e-4  # points on the x10 scale; float32 on CPU, identical operations


@pytest.fixture(scope="module")
def tiny_aes(tmp_path_factory):
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    root = tmp_path_factory.mktemp("aes")
    torch.manual_seed(0)
    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=32, patch_size=8)
    SiglipVisionModel(cfg).save_pretrained(root / "siglip")
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "siglip")
    from metrics.aes import aes_head

    head = aes_head(32)
    for p in head.parameters():  # spread the outputs: default init gives nearly equal scores
        torch.nn.init.normal_(p, std=0.5)
    torch.save(OrderedDict((f"scoring_head.{k}", v) for k, v in head.state_dict().items()), root / "head.pth")
    paths = []
    for i, size in enumerate([(40, 56), (64, 64), (30, 90)]):
        paths.append(root / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)).save(paths[-1])
    return root, paths


def test_aes_equals_the_package_score_x10(tiny_aes):
    apv = pytest.importorskip("aesthetic_predictor_v2_5", reason="aesthetic-predictor-v2-5 is not installed")
    root, paths = tiny_aes
    model, processor = apv.convert_v2_5_from_siglip(str(root / "head.pth"), str(root / "siglip"))
    images = [Image.open(p).convert("RGB") for p in paths]
    with torch.inference_mode():
        ref = model(processor(images=images, return_tensors="pt").pixel_values).logits.squeeze(-1).numpy()
    cfg = {"aes": {"encoder": str(root / "siglip"), "head": str(root / "head.pth"), "device": "cpu"}}
    table = evaluate([Item(str(i), p, "", []) for i, p in enumerate(paths)], cfg, ["AES"])[0]
    assert np.ptp(ref) > 0.01  # the images score differently: a constant would pass too easily
    np.testing.assert_allclose(table["value"].to_numpy(), 10 * ref, atol=TOL, rtol=0)
    assert set(table["protocol"]) == {"xverse"}


def test_a_pickled_head_is_refused_and_missing_files_name_the_key(tiny_aes, tmp_path):
    root, paths = tiny_aes
    bad = tmp_path / "head.pth"
    torch.save({"scoring_head.0.weight": torch.zeros(1), "note": object.__new__(Item)}, bad)  # not tensors only
    with pytest.raises(ValueError, match=r"weights_only=True"):
        evaluate([Item("a", paths[0], "", [])], {"aes": {"encoder": str(root / "siglip"), "head": str(bad)}}, ["AES"])
    with pytest.raises(MetricUnavailable, match=r"aes\.head"):
        evaluate([Item("a", paths[0], "", [])], {"aes": {"encoder": str(root / "siglip")}}, ["AES"])
    with pytest.raises(ValueError, match=r"'aes': protocol 'raw'"):
        evaluate([Item("a", paths[0], "", [])], {"aes": {"protocol": "raw", "encoder": str(root / "siglip"),
                                                          "head": str(root / "head.pth")}}, ["AES"])
