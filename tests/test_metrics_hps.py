"""HPSv2.1: the checkpoint loader on a tiny open_clip model in HPS's checkpoint format; HPSv3's clear error."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import metrics.hps as hps
from metrics.evaluate import evaluate
from metrics.manifest import Item
from metrics.registry import Context, MetricUnavailable
from metrics.tiny_evaluators.clip_training import CLIP_CFG, new_clip


@pytest.fixture()
def tiny_hps(tmp_path):
    arch = tmp_path / "arch"
    arch.mkdir()  # architecture only: open_clip_config.json, no weights (random init, then the checkpoint)
    (arch / "open_clip_config.json").write_text(json.dumps({"model_cfg": CLIP_CFG}))
    trained = new_clip(seed=7)
    ckpt = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, ckpt)
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 40, 3), dtype=np.uint8)).save(img)
    return {"hpsv21": {"model": f"local-dir:{arch}", "checkpoint": str(ckpt)}}, trained, img


def test_hps_loader_loads_checkpoint_once_and_scores_like_hpsv2(tiny_hps, monkeypatch):
    import open_clip

    cfg, trained, img = tiny_hps
    calls = []
    real = hps.load_hps_checkpoint
    monkeypatch.setattr(hps, "load_hps_checkpoint", lambda net, path: (calls.append(path), real(net, path)))
    ctx = Context(cfg)
    items = [Item("a", img, "a red star", []), Item("b", img, "a blue disk", [])]
    t1 = evaluate(items, cfg, ["HPSv2.1"], ctx=ctx)[0]
    t2 = evaluate(items, cfg, ["HPSv2.1"], ctx=ctx)[0]
    assert len(calls) == 1  # one load per evaluation context, however many batches or calls
    model = ctx._models[next(k for k in ctx._models if k[0] == "hpsv21")]
    for k, v in trained.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v), k
    # hpsv2's computation: eval transform that keeps the whole image (longest side, zero pad), cosine
    pre = open_clip.image_transform(CLIP_CFG["vision_cfg"]["image_size"], is_train=False, resize_mode="longest")
    tok = open_clip.get_tokenizer("ViT-B-32", context_length=CLIP_CFG["text_cfg"]["context_length"])
    trained.eval()
    with torch.no_grad():
        f = trained.encode_image(pre(Image.open(img))[None], normalize=True)
        t = trained.encode_text(tok(["a red star", "a blue disk"]), normalize=True)
    direct = (100 * f @ t.T)[0].numpy()
    np.testing.assert_allclose(t1.value.to_numpy(), direct, atol=1e-4)
    assert t1.value.tolist() == t2.value.tolist() and t1.reference.isna().all()


def test_hps_missing_checkpoint_and_hpsv3_fail_clearly(tmp_path):
    item = [Item("a", tmp_path / "a.png", "p", [])]
    with pytest.raises(MetricUnavailable, match=rf"hpsv21\.checkpoint: {tmp_path}/x.pt not found"):
        evaluate(item, {"hpsv21": {"checkpoint": str(tmp_path / "x.pt")}})
    try:
        import hpsv3  # noqa: F401
    except ImportError:
        with pytest.raises(MetricUnavailable, match=r"workflow/envs/hpsv3\.yaml"):
            evaluate(item, {"hpsv3": {"checkpoint": "x"}})
