"""CLIP-I / CLIP-T / DINO against direct open_clip and timm computations, the DINO protocol's
preprocessing, the tidy and aggregate tables, and clear errors on bad input."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from metrics.clip import ClipModel
from metrics.dino import DinoModel
from metrics.evaluate import evaluate, evaluate_folder
from metrics.manifest import Item, ManifestError, RefInput, read_items
from metrics.registry import MetricUnavailable
from metrics.tiny_evaluators.clip_training import new_clip, save_clip
from metrics.tiny_evaluators.dino_training import new_vit, save_dino
from mosaic.cli import main as mosaic_main
from mosaic.data.records import DataError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_clip(new_clip(seed=1), root / "clip")
    save_dino(new_vit(seed=2), root / "dino")
    world = "random weights"
    return {"clip_i": {"model": f"local-dir:{root / 'clip'}", "world": world},
            "clip_t": {"model": f"local-dir:{root / 'clip'}", "world": world},
            "dino": {"model": f"local-dir:{root / 'dino'}", "world": world}}


def _img(seed, size=(40, 56)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture()
def folder(tmp_path):
    for i in range(3):
        Image.fromarray(_img(i)).save(tmp_path / f"img{i}.png")
    lines = [{"image": "img0.png", "prompt": "a sks red star and a blue disk", "method": "m", "seed": 1,
              "references": [{"image": "img0.png", "word": "star", "token": "sks"}, {"image": "img1.png"}]},
             {"image": "img2.png", "prompt": "a blue disk", "method": "m", "seed": 2,
              "references": [{"image": "img1.png", "word": "disk"}]}]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return tmp_path


def test_identical_images_score_100_and_tables_are_tidy(folder, models):
    table, agg, info = evaluate(read_items(folder / "manifest.jsonl"), models, ["CLIP-I", "CLIP-T", "DINO"])
    first = table[(table.id == "img0.png") & (table.reference == 0)].set_index("metric")
    assert first.loc["CLIP-I", "value"] == pytest.approx(100.0, abs=1e-3)
    assert first.loc["DINO", "value"] == pytest.approx(100.0, abs=1e-3)
    assert (table.label[table.metric == "CLIP-I"] == "CLIP-I (random weights)").all()
    # one row per (image, reference) for CLIP-I / DINO, one per image for CLIP-T
    assert (table.metric == "CLIP-I").sum() == 3 and (table.metric == "CLIP-T").sum() == 2
    assert table[table.metric == "CLIP-T"].reference.isna().all()
    for col in ("model", "weights", "protocol"):
        assert (table[col] != "").all()
    # img1.png is a reference twice: embedded once per model, then served from the cache
    clip_refs = info["cache"][next(k for k in info["cache"] if k.startswith("open_clip") and k.endswith("references"))]
    assert clip_refs == {"hits": 1, "misses": 2, "hit_rate": pytest.approx(1 / 3)}
    # CLIP-I and CLIP-T share one model: the generated images are embedded once
    gen = info["cache"][next(k for k in info["cache"] if k.startswith("open_clip") and k.endswith("generated"))]
    assert gen["misses"] == 2 and gen["hits"] == 2
    row = agg[(agg.metric == "CLIP-I") & agg.statistic.str.startswith("mean over images of the min")].iloc[0]
    per_image_min = table[table.metric == "CLIP-I"].groupby("id").value.min().mean()
    assert row.value == pytest.approx(per_image_min)


def test_clip_equals_direct_open_clip(folder, models):
    import open_clip

    name = models["clip_i"]["model"]
    net, _, preprocess = open_clip.create_model_and_transforms(name)
    tok = open_clip.get_tokenizer(name)
    net.eval()
    a, b = Image.open(folder / "img2.png"), Image.open(folder / "img1.png")
    with torch.no_grad():
        f = net.encode_image(torch.stack([preprocess(a), preprocess(b)]))
        t = net.encode_text(tok(["a blue disk"]))
    direct_i = 100 * torch.nn.functional.cosine_similarity(f[0], f[1], dim=0).item()
    direct_t = 100 * torch.nn.functional.cosine_similarity(f[0], t[0], dim=0).item()
    table = evaluate(read_items(folder / "manifest.jsonl"), models, ["CLIP-I", "CLIP-T"])[0]
    mine = table[table.id == "img2.png"].set_index("metric").value
    assert mine["CLIP-I"] == pytest.approx(direct_i, abs=1e-4)
    assert mine["CLIP-T"] == pytest.approx(direct_t, abs=1e-4)


def test_clip_t_drops_subject_tokens():
    item = Item("x", "x.png", "a photo of sks dog", [RefInput("r.png", token="sks")])
    assert item.clip_t_prompt == "a photo of dog"


@pytest.fixture(scope="module")
def vit_s16(tmp_path_factory):
    """The paper's DINO architecture (ViT-S/16) with random weights saved as a local file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("vit_small_patch16_224.dino", pretrained=False, num_classes=0).eval()
    path = tmp_path_factory.mktemp("vits") / "vit_small_patch16_224.dino.safetensors"
    save_file(net.state_dict(), str(path))
    return net, path


def test_dino_equals_direct_timm_and_follows_the_protocol(vit_s16, tmp_path):
    import timm

    net, path = vit_s16
    model = DinoModel("dino", {"model": "vit_small_patch16_224.dino", "weights": str(path)})
    # a known input: 320x240 gradient with a bright square off-centre
    y, x = np.mgrid[0:240, 0:320]
    img = np.stack([x * 255 // 319, y * 255 // 239, (x + y) % 256], -1).astype(np.uint8)
    img[20:60, 250:300] = 255
    seen = []
    hook = model.net.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    emb = model.embed([img, img[::-1].copy()])
    hook.remove()
    # protocol: short side to 256 (320x240 -> 341x256) bicubic, centre crop 224, ImageNet mean/std
    pil = Image.fromarray(img).resize((341, 256), Image.BICUBIC)
    left, top = int(round((341 - 224) / 2.0)), int(round((256 - 224) / 2.0))
    crop = np.asarray(pil, np.float32)[top:top + 224, left:left + 224] / 255.0
    expected = (crop - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(seen[0][0].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    # direct timm: its transform with the protocol's crop_pct (timm's default for this tag is 0.9)
    tf = timm.data.create_transform(input_size=224, interpolation="bicubic", crop_pct=224 / 256,
                                    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    with torch.no_grad():
        direct = net(torch.stack([tf(Image.fromarray(img)), tf(Image.fromarray(img[::-1].copy()))])).numpy()
    np.testing.assert_allclose(emb, direct, atol=1e-5)
    assert "resize 256 bicubic, center crop 224" in model.procedure


def test_missing_weights_name_the_key_and_path(tmp_path, folder):
    items = read_items(folder / "manifest.jsonl")
    with pytest.raises(MetricUnavailable, match=rf"dino\.weights: {tmp_path}/nope.safetensors not found"):
        evaluate(items, {"dino": {"model": "vit_small_patch16_224.dino", "weights": str(tmp_path / "nope.safetensors")}})
    with pytest.raises(MetricUnavailable, match=rf"clip_i\.pretrained: checkpoint file {tmp_path}/c.pt not found"):
        ClipModel("clip_i", "ViT-B-32", str(tmp_path / "c.pt"))
    with pytest.raises(MetricUnavailable, match=rf"clip_t\.model: {tmp_path}/open_clip_config.json not found"):
        ClipModel("clip_t", f"local-dir:{tmp_path}")
    with pytest.raises(MetricUnavailable, match=r"hpsv21\.checkpoint is not set"):
        evaluate(items, {"hpsv21": {"model": "ViT-H-14"}})
    # --allow-missing: NaN rows carrying the reason instead of an error
    table = evaluate(items, {"hpsv21": {"model": "ViT-H-14"}}, missing="nan")[0]
    assert len(table) == 2 and table.value.isna().all() and table.reason.str.contains("hpsv21.checkpoint").all()


def test_bad_manifest_and_images_name_file_and_key(tmp_path, models):
    m = tmp_path / "manifest.jsonl"
    m.write_text(json.dumps({"image": "a.png", "prompt": "p", "k": 2, "references": [{"image": "r.png"}]}) + "\n")
    with pytest.raises(ManifestError, match=rf"{m}:1: key 'k' = 2 but 'references' has 1 entries"):
        read_items(m)
    m.write_text(json.dumps({"image": "a.png", "references": []}) + "\n")
    with pytest.raises(ManifestError, match=rf"{m}:1: missing required key 'prompt'"):
        read_items(m)
    m.write_text(json.dumps({"image": "a.png", "prompt": "p", "references": [{"word": "x"}]}) + "\n")
    with pytest.raises(ManifestError, match=r":1: references\[0\]: must be an object with an 'image' key"):
        read_items(m)
    (tmp_path / "a.png").write_bytes(b"not a png")
    m.write_text(json.dumps({"image": "a.png", "prompt": "p", "references": []}) + "\n")
    with pytest.raises(DataError, match=rf"{tmp_path}/a.png: unreadable image"):
        evaluate(read_items(m), models, ["CLIP-T"])


def test_mosaic_eval_cli_writes_tables_atomically(folder, models, capsys):
    cfg = folder / "metrics.yaml"
    cfg.write_text(json.dumps({"metrics": models}))
    assert mosaic_main(["eval", str(folder), "--config", str(cfg), "--metrics", "CLIP-I,DINO"]) == 0
    out = folder / "eval"
    assert {p.name for p in out.iterdir()} == {"metrics.csv", "aggregate.csv", "evaluation.json"}
    assert "CLIP-I (random weights)" in capsys.readouterr().out
    info = json.loads((out / "evaluation.json").read_text())
    assert set(info["metrics"]) == {"CLIP-I", "DINO"}
    assert not list(folder.glob(".eval.tmp-*"))
    # a bad config key is an error naming it, exit status 2
    cfg.write_text(json.dumps({"metrics": {"dino": {"model": "local-dir:/nonexistent/dino"}}}))
    assert mosaic_main(["eval", str(folder), "--config", str(cfg)]) == 2
    assert "dino.model: /nonexistent/dino/dino_config.json not found" in capsys.readouterr().err


def test_evaluate_folder_default_metrics_follow_config(folder, models):
    out = evaluate_folder(folder, {"dino": models["dino"]}, out=folder / "ev")
    import pandas as pd

    table = pd.read_csv(out / "metrics.csv")
    assert set(table.metric) == {"DINO"} and not math.isnan(table.value.iloc[0])


def test_a_relative_local_dir_model_is_relative_to_its_config_file(tmp_path):
    """A shipped evaluators folder is relocatable: its metrics_config.json names its models relative to itself."""
    import json

    from metrics.config import load_config

    (tmp_path / "evaluators").mkdir()
    path = tmp_path / "evaluators" / "metrics_config.json"
    path.write_text(json.dumps({"clip_i": {"model": "local-dir:clip"}, "dino": {"model": "local-dir:/abs/dino"}}))
    cfg = load_config(path, None)
    assert cfg["clip_i"]["model"] == f"local-dir:{(tmp_path / 'evaluators' / 'clip').resolve()}"
    assert cfg["dino"]["model"] == "local-dir:/abs/dino"


def _activations(net) -> dict[str, int]:
    from open_clip.transformer import QuickGELU

    kinds = {"QuickGELU": QuickGELU, "GELU": torch.nn.GELU}
    return {k: sum(isinstance(m, t) for m in net.modules()) for k, t in kinds.items()}


@pytest.fixture()
def no_weight_files(monkeypatch):
    """open_clip without its weight files: the tag's download and the checkpoint load are skipped, the model is
    built through the loader's real path (randomly initialised)."""
    import open_clip.factory as factory

    fetched = []
    monkeypatch.setattr(factory, "download_pretrained", lambda cfg, **kw: fetched.append(cfg["url"]) or "/no/file")
    monkeypatch.setattr(factory, "load_checkpoint", lambda *a, **kw: None)
    return fetched


@pytest.mark.parametrize("model", ["ViT-B-32", "ViT-B-32-quickgelu"])
def test_openai_clip_loads_with_quick_gelu(no_weight_files, model):
    """OpenAI's CLIP was trained with QuickGELU; open_clip 3's plain ViT-B-32 config builds GELU towers."""
    m = ClipModel("clip_i", model, "openai")
    assert no_weight_files and "openai" in no_weight_files[0]  # the tag's weights were asked for
    acts = _activations(m.net)
    assert acts["GELU"] == 0 and acts["QuickGELU"] == 24  # 12 vision + 12 text blocks
    assert m.quick_gelu and "QuickGELU" in m.procedure and m.id.endswith(":quickgelu")


def test_gelu_weights_keep_gelu_and_a_checkpoint_file_must_say(no_weight_files, tmp_path):
    from metrics.clip import quick_gelu

    m = ClipModel("clip_i", "ViT-B-32", "laion2b_s34b_b79k")  # open_clip marks this tag GELU-trained
    assert _activations(m.net)["QuickGELU"] == 0 and not m.quick_gelu
    ckpt = tmp_path / "ViT-B-32.pt"
    ckpt.write_bytes(b"")
    with pytest.raises(MetricUnavailable, match=r"clip_t\.quick_gelu is not set: .*ViT-B-32\.pt is a checkpoint file"):
        quick_gelu("clip_t", "ViT-B-32", str(ckpt))
    assert quick_gelu("clip_t", "ViT-B-32", str(ckpt), True) is True
    with pytest.raises(ValueError, match=r"clip_t\.quick_gelu: 'yes' must be true or false"):
        quick_gelu("clip_t", "ViT-B-32", str(ckpt), "yes")


def test_paper_profile_one_clip_and_named_protocols(folder, models):
    from metrics.config import PAPER

    assert PAPER["clip_i"]["model"] == PAPER["clip_t"]["model"] == "ViT-B-32"
    table, agg, info = evaluate(read_items(folder / "manifest.jsonl"), {**models, "mechanism": {}},
                                ["CLIP-I", "CLIP-T", "DINO", "alignment accuracy"])
    by = table.groupby("metric")
    assert by["protocol"].unique().map(list).to_dict() == {
        "CLIP-I": ["dreambench++"], "CLIP-T": ["dreambench++"], "DINO": ["xverse"], "alignment accuracy": ["mosaic"]}
    assert table.loc[table.metric == "DINO", "procedure"].str.contains("center crop 48").all()  # its saved preprocess
    assert table.loc[table.metric == "alignment accuracy", "procedure"].str.contains("Chebyshev").all()
    assert {"protocol", "procedure"} <= set(agg.columns) and (agg["protocol"] != "").all()
    with pytest.raises(ValueError, match=r"section 'dino': protocol 'dreambooth' is not one of xverse, dreambench\+\+"):
        evaluate(read_items(folder / "manifest.jsonl"), {"dino": {**models["dino"], "protocol": "dreambooth"}})


def test_dino_protocol_and_model_must_agree(vit_s16):
    net, path = vit_s16
    with pytest.raises(ValueError, match=r"'dino': model 'vit_small_patch16_224.dino' is not the model of protocol "
                                         r"'dreambench\+\+' \(vit_small_patch8_224.dino\)"):
        DinoModel("dino", {"model": "vit_small_patch16_224.dino", "weights": str(path)}, "dreambench++")


def test_an_unavailable_metric_still_records_its_protocol(folder):
    table = evaluate(read_items(folder / "manifest.jsonl"), {"hpsv21": {"model": "ViT-H-14"}}, missing="nan")[0]
    assert (table.protocol == "hpsv2").all() and table.value.isna().all()
    cfg = {"id_sim": {"backend": "insightface", "model_root": str(folder / "none")}}  # ID-Sim's own protocol rule
    table = evaluate(read_items(folder / "manifest.jsonl"), cfg, ["ID-Sim"], missing="nan")[0]
    assert (table.protocol == "insightface").all() and table.value.isna().all()


def test_workflow_logs_each_metrics_protocol_as_a_tag(folder, models, tmp_path):
    """workflow/scripts/evaluate.py: the record's tags carry protocol/<metric> (what the tables compare)."""
    from workflow.scripts.evaluate import image_metrics

    metrics, tags = image_metrics(folder, models, ["CLIP-I", "CLIP-T", "DINO"], tmp_path / "eval")
    assert {tags[f"protocol/{m}"] for m in ("CLIP-I", "CLIP-T")} == {"dreambench++"}
    assert tags["protocol/DINO"] == "xverse" and "CLS cosine x100" in tags["procedure/DINO"]
    assert "img/CLIP-I" in metrics and "protocol/CLIP-I.min" not in tags
