"""Baselines without training: the registry, the official adapters' errors, the image-folder adapter
through `mosaic eval`, and the mechanisms of the controlled baselines (DreamO's routing loss,
XVerse's token-specific modulation, UNO's positions)."""
import json
import shutil
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from baselines.controlled.dreamo import routing_loss
from baselines.controlled.xverse import WORDS, XVerseExtension, phrase_spans, subject_token_mask
from baselines.official.base import OfficialUnavailable
from baselines.registry import get_baseline, list_baselines
from metrics.tiny_evaluators.clip_training import new_clip, save_clip
from metrics.tiny_evaluators.dino_training import new_vit, save_dino
from mosaic.cli import main
from mosaic.config import load_config
from mosaic.data.records import read_manifest
from mosaic.data.synthetic import generate_dataset
from mosaic.model import HashedWordEncoder, TokenLayout, build_model, position_ids
from mosaic.flow import Encoded


def test_registry_lists_every_baseline_and_resolves_each_lazily():
    names = list_baselines()
    assert set(names) == {"omnicontrol", "uno", "dreamo", "xverse", "dreamo-official", "uno-official",
                          "xverse-official", "images"}
    for name in names:
        cls = get_baseline(name)
        assert callable(getattr(cls, "generate"))
    for name in ("omnicontrol", "uno", "dreamo", "xverse"):
        assert callable(get_baseline(name).train) and get_baseline(name).name == name
    with pytest.raises(ValueError, match="unknown baseline 'nope'"):
        get_baseline("nope")


# ---------------------------------------------------------------- official releases

@pytest.mark.parametrize("name,module", [("uno-official", "uno.flux.pipeline")])
def test_official_adapter_without_its_package_says_what_to_install(name, module):
    with pytest.raises(OfficialUnavailable) as e:
        get_baseline(name)()
    msg = str(e.value)
    assert module in msg and f"workflow/envs/{name}.yaml" in msg and "pip install" in msg


def test_uno_official_without_weights_names_each_and_where_it_goes(monkeypatch):
    for part in ("uno", "uno.flux", "uno.flux.pipeline"):
        monkeypatch.setitem(sys.modules, part, types.ModuleType(part))
    for var in ("FLUX_DEV", "AE", "T5", "CLIP", "LORA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LORA", "/nonexistent/dit_lora.safetensors")
    with pytest.raises(OfficialUnavailable) as e:
        get_baseline("uno-official")()
    msg = str(e.value)
    assert "weights not found" in msg
    for var in ("$FLUX_DEV", "$AE", "$T5", "$CLIP", "$LORA"):
        assert var in msg
    assert "/nonexistent/dit_lora.safetensors" in msg and "bytedance-research/UNO" in msg
    with pytest.raises(ValueError, match="unknown setting"):
        get_baseline("uno-official")(steps=3)


@pytest.mark.parametrize("name,var,stub,weight", [
    ("dreamo-official", "DREAMO_ROOT", "dreamo_generator.py", "models/dreamo.safetensors"),
    ("xverse-official", "XVERSE_ROOT", "src/flux/generate.py", "checkpoints/XVerse/modulation_adapter"),
])
def test_repo_based_official_adapters_need_a_checkout_then_weights(name, var, stub, weight, tmp_path, monkeypatch):
    monkeypatch.delenv(var, raising=False)
    with pytest.raises(OfficialUnavailable, match=f"\\${var}") as e:
        get_baseline(name)()
    assert f"workflow/envs/{name}.yaml" in str(e.value)
    repo = tmp_path / "upstream"  # a checkout whose code imports, without any weights
    (repo / stub).parent.mkdir(parents=True, exist_ok=True)
    (repo / stub).write_text("")
    if stub.startswith("src/"):
        for d in ("src", "src/flux"):
            (repo / d / "__init__.py").write_text("")
    monkeypatch.setattr(sys, "path", list(sys.path))
    top = stub.split("/")[0].removesuffix(".py")
    try:
        with pytest.raises(OfficialUnavailable) as e:
            get_baseline(name)(repo=repo)
        assert "weights not found" in str(e.value) and str(repo / weight) in str(e.value)
    finally:
        for mod in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[mod]


# ---------------------------------------------------------------- image folder

@pytest.fixture(scope="module")
def val(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("val") / "val", 3, 0, "val", 2, 3)


def test_image_folder_round_trip_through_mosaic_eval(val, tmp_path, capsys):
    records = read_manifest(val)
    folder = tmp_path / "external"
    folder.mkdir()
    for rec in records[:2]:  # reference 0 stands in for the generated image; the third prompt has none
        shutil.copy(val / rec["references"][0]["image"], folder / f"{rec['id']}_s7.png")
    shutil.copy(val / records[0]["target"], folder / "unknown-prompt_s0.png")
    adapter = get_baseline("images")(folder, dataset=val)
    report = adapter.write_manifest("external")
    assert report.written == 2 and report.missing == [records[2]["id"]]
    assert report.unmatched == ["unknown-prompt_s0.png"]
    with pytest.raises(Exception, match="1 prompt"):
        adapter.write_manifest("external", require_all=True)
    img = adapter.generate(records[1]["prompt"], [], 7)
    assert np.array_equal(np.asarray(img), np.asarray(adapter.generate("", [], 7, id=records[1]["id"])))
    with pytest.raises(FileNotFoundError, match="_s8"):
        adapter.generate(records[1]["prompt"], [], 8)
    # any registered baseline samples through `mosaic sample --baseline` (here: a copy of the folder)
    copy = tmp_path / "copy"
    assert main(["sample", "--baseline", "images", "--baseline-arg", f"folder={folder}", "--baseline-arg",
                 f"dataset={val}", "--dataset", str(val), "--limit", "2", "--seeds", "7", "--out", str(copy)]) == 0
    lines = [json.loads(x) for x in (copy / "manifest.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [f"{r['id']}_s7" for r in records[:2]] and lines[0]["method"] == "images"
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(copy / lines[1]["image"])))

    save_clip(new_clip(3), tmp_path / "clip")
    save_dino(new_vit(4), tmp_path / "dino")
    cfg = {"clip_i": {"model": f"local-dir:{tmp_path / 'clip'}", "world": "random weights"},
           "dino": {"model": f"local-dir:{tmp_path / 'dino'}", "world": "random weights"}}
    (tmp_path / "metrics.json").write_text(json.dumps(cfg))
    assert main(["eval", str(folder), "--config", str(tmp_path / "metrics.json")]) == 0
    table = pd.read_csv(folder / "eval" / "metrics.csv")
    assert set(table.id) == {f"{r['id']}_s7" for r in records[:2]} and set(table.method) == {"external"}
    for metric in ("CLIP-I", "DINO"):
        rows = table[table.metric == metric]
        assert rows[rows.reference == 0].value.round(3).eq(100).all()  # the image is reference 0 itself
        assert (rows[rows.reference == 1].value < 99.9).all()


# ---------------------------------------------------------------- dreamo: routing constraint

def test_routing_loss_is_minimal_when_the_attention_lies_inside_the_mask():
    nt = 16
    mask = torch.zeros(nt, dtype=torch.bool)
    mask[[1, 2, 5, 6]] = True

    def loss(a):
        return float(routing_loss(a[None, None], mask[None, None], torch.ones(1, 1, dtype=torch.bool)))

    rng = torch.Generator().manual_seed(0)
    inside = [torch.zeros(nt).index_put_((mask.nonzero()[:, 0],), torch.rand(4, generator=rng)) for _ in range(50)]
    outside = [torch.zeros(nt).index_put_(((~mask).nonzero()[:, 0],), torch.rand(12, generator=rng)) for _ in range(50)]
    inside = [a / a.sum() for a in inside]
    outside = [a / a.sum() for a in outside]
    assert max(map(loss, inside)) < min(map(loss, outside))  # any map inside beats any map outside
    uniform_in = mask.float() / 4
    assert loss(uniform_in) <= min(map(loss, inside)) + 1e-6
    # descending the loss from random logits moves the attention into the mask
    logits = torch.randn(nt, generator=rng, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        routing_loss(logits.softmax(-1)[None, None], mask[None, None], torch.ones(1, 1, dtype=torch.bool)).backward()
        opt.step()
    assert logits.softmax(-1)[mask].sum() > 0.99
    # padded references and subjects with an empty mask carry no term
    maps = torch.stack([uniform_in, torch.full((nt,), 1 / nt)])[None]
    masks = torch.stack([mask, torch.zeros(nt, dtype=torch.bool)])[None]
    assert float(routing_loss(maps, masks, torch.tensor([[True, True]]))) == pytest.approx(loss(uniform_in))
    assert float(routing_loss(maps, masks, torch.tensor([[False, False]]))) == 0


# ---------------------------------------------------------------- xverse: token-specific modulation

def test_subject_tokens_are_the_words_of_each_phrase():
    prompt = "A red star and a blue moon, then a red star again"
    spans = lambda p: [m.span() for m in WORDS.finditer(p.lower())]  # noqa: E731
    assert [prompt.lower()[s:e] for s, e in spans(prompt)] == HashedWordEncoder.words(prompt)
    second = prompt.lower().rindex("a red star")
    assert phrase_spans(prompt, ["a red star", "a red star"]) == [(0, 10), (second, second + 10)]
    mask = subject_token_mask([prompt, ""], [["a red star", "a blue moon"], ["x"]], 3, spans)
    words = HashedWordEncoder.words(prompt)
    assert [words[i] for i in mask[0, 0].nonzero()[:, 0]] == ["a", "red", "star"]
    assert mask[0, 0, :3].all() and not mask[0, 0, 3:].any()  # the first occurrence only
    assert mask[0, 1].nonzero()[:, 0].tolist() == [4, 5, 6]
    assert not mask[0, 2].any() and not mask[1].any()


@pytest.fixture(scope="module")
def xverse():
    cfg = load_config(None, ["model.flavour=debug", "data.train=unused",
                             "model.extension=baselines.controlled.xverse:XVerseExtension"])
    model = build_model("debug", seed=0)
    ext = XVerseExtension(cfg)
    ext.setup(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter (it starts at zero)
        for p in model.xverse_adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model, ext


def xverse_inputs(model, refs, ref_mask, prompts, phrases):
    from mosaic.model import build_text_encoder

    text, pooled = build_text_encoder("debug").encode(prompts)
    enc = Encoded(torch.randn(len(prompts), 144, 192, generator=torch.Generator().manual_seed(1)), refs, ref_mask,
                  text, pooled, (12, 12), (6, 6))
    return enc, {"phrases": phrases}


def test_xverse_offsets_reach_only_the_tokens_naming_that_subject(xverse):
    model, ext = xverse
    g = torch.Generator().manual_seed(2)
    refs = torch.randn(2, 2, 36, 192, generator=g)
    ref_mask = torch.tensor([[True, True], [True, False]])
    prompts = ["a red star and a blue moon", "a green ring"]
    phrases = [["a red star", "a blue moon"], ["a green ring", ""]]
    enc, batch = xverse_inputs(model, refs, ref_mask, prompts, phrases)
    off = ext.forward_kwargs(model, batch, prompts, enc)["text_temb_offset"]  # [B, blocks, L, D]
    assert off.shape == (2, 3, 8, model.transformer.inner_dim)
    touched = off.abs().sum((1, 3)) > 0
    assert touched[0].nonzero()[:, 0].tolist() == [0, 1, 2, 4, 5, 6]  # "and" (3) is named by no subject
    assert touched[1].nonzero()[:, 0].tolist() == [0, 1, 2]
    assert not torch.allclose(off[0, 0, 0], off[0, 1, 0])  # per-block offsets differ
    # changing subject 1's reference changes only the tokens naming subject 1
    refs2 = refs.clone()
    refs2[0, 1] += 1
    enc2, _ = xverse_inputs(model, refs2, ref_mask, prompts, phrases)
    off2 = ext.forward_kwargs(model, batch, prompts, enc2)["text_temb_offset"]
    changed = (off2 - off).abs().sum((1, 3)) > 0
    assert changed[0].nonzero()[:, 0].tolist() == [4, 5, 6] and not changed[1].any()
    # a dropped reference names nothing
    enc3, _ = xverse_inputs(model, refs, torch.tensor([[False, True], [True, False]]), prompts, phrases)
    off3 = ext.forward_kwargs(model, batch, prompts, enc3)["text_temb_offset"]
    assert (off3.abs().sum((1, 3)) > 0)[0].nonzero()[:, 0].tolist() == [4, 5, 6]
    with pytest.raises(ValueError, match="no phrase"):  # a real reference must be named
        ext.forward_kwargs(model, {"phrases": [["a red star", ""], ["a green ring", ""]]}, prompts, enc)


def test_xverse_modulation_changes_only_the_named_text_tokens_in_the_model(xverse):
    """Block 0's text queries depend on each text token's own modulation only: with the offsets, exactly
    the named tokens' queries change (needs the model's text_temb_offset input)."""
    model, ext = xverse
    refs = torch.randn(1, 2, 36, 192, generator=torch.Generator().manual_seed(3))
    prompts, phrases = ["a red star and a blue moon"], [["a red star", "a blue moon"]]
    enc, batch = xverse_inputs(model, refs, torch.ones(1, 2, dtype=torch.bool), prompts, phrases)
    kw = ext.forward_kwargs(model, batch, prompts, enc)
    seen = {}

    def hook(tag):
        return lambda i, q, k, layout: seen.setdefault((tag, i), q[:, :, layout.text].detach())

    args = (enc.x0, refs, enc.ref_mask, enc.text, enc.pooled, torch.full((1,), 0.5))
    with torch.no_grad():
        base = model(*args, target_grid=(12, 12), ref_grid=(6, 6), attn_hook=hook("none"))
        zero = model(*args, target_grid=(12, 12), ref_grid=(6, 6), attn_hook=hook("zero"),
                     text_temb_offset=torch.zeros_like(kw["text_temb_offset"]))
        mod = model(*args, target_grid=(12, 12), ref_grid=(6, 6), attn_hook=hook("mod"), **kw)
    assert torch.allclose(base, zero, atol=1e-6)
    diff = (seen["mod", 0] - seen["none", 0]).abs().sum((0, 1, 3))  # per text position
    assert (diff > 1e-4 * diff.max()).nonzero()[:, 0].tolist() == [0, 1, 2, 4, 5, 6]  # the rest: float noise only
    assert not torch.allclose(base, mod)


# ---------------------------------------------------------------- uno: UnoPE and the curriculum

def test_uno_config_uses_diagonal_positions_and_a_single_subject_first_curriculum(tmp_path):
    from baselines.controlled.uno import Uno

    cfg = Uno.config(None, [f"data.train={tmp_path}", "train.steps=10"])
    assert cfg.variant == "uno" and cfg.model.pos_scheme == "diagonal"
    assert cfg.loss.alpha == 0 and cfg.loss.beta == 0
    [stage] = cfg.data.curriculum
    assert (stage.train, stage.steps, stage.max_k) == (str(tmp_path), 5, 1)
    explicit = Uno.config(None, [f"data.train={tmp_path}", "train.steps=10",
                                 f'data.curriculum=[{{train: {tmp_path}, steps: 3}}]'])
    assert [(s.steps, s.max_k) for s in explicit.data.curriculum] == [(3, None)]


def test_uno_positions_follow_unope_diagonal_offsets():
    """Reference k starts where UNO's prepare_multi_ip (pe="d") puts it: the shift starts at the
    target's token size and grows by each earlier reference's size on both axes."""
    tgrid, rgrid, k = (12, 10), (6, 5), 3
    layout = TokenLayout(n_text=4, n_target=120, n_ref=30, k_max=k)
    ids = position_ids(layout, tgrid, rgrid, "diagonal")
    shift_h, shift_w = tgrid
    for j in range(k):
        got = ids[layout.ref(j)].reshape(*rgrid, 3)
        rows, cols = torch.meshgrid(torch.arange(rgrid[0]), torch.arange(rgrid[1]), indexing="ij")
        assert torch.equal(got[..., 1], (rows + shift_h).float()) and torch.equal(got[..., 2], (cols + shift_w).float())
        assert (got[..., 0] == 0).all()
        shift_h, shift_w = shift_h + rgrid[0], shift_w + rgrid[1]
    assert build_model("debug", pos_scheme="diagonal").pos_scheme == "diagonal"
