"""Parity with upstream MOSAIC and the official baselines where the paper is silent (docs/fidelity.md).

Every expected value here is derived by hand from upstream's code (bytedance-fanqie-ai/MOSAIC c5cc7c6:
train.py, utils.py, src/flux_omini.py; bytedance/XVerse 65e2581; bytedance/DreamO 461e35b; bytedance/UNO
d305981), on tiny random models of the real classes.
"""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mosaic.config import load_config
from mosaic.components import Components
from mosaic.data.collage import CollageLayout, write_collages
from mosaic.data.records import DatasetWriter, Reference, Sample, read_manifest
from mosaic.data.synthetic import generate_dataset
from mosaic.flow import encode_batch, step_generator
from mosaic.model import LoraSpec, build_codec, build_model
from mosaic.inference.sampler import prepare_reference, upstream_reference
from mosaic.train import apply_dropout, train


# ---------------------------------------------------------------- 1. reference guidance at sampling

def test_reference_time_embedding_at_sampling_is_the_guidance_one_embedding():
    """Upstream `generate` gives the reference branch guidance 1 and timestep 0 whatever the target's guidance."""
    m = build_model("debug", lora=None)
    tr, pooled = m.transformer, torch.randn(2, 16)
    t = torch.tensor([0.7, 0.3])
    temb_t, temb_0 = m.time_embeddings(t, torch.full((2,), 3.5), pooled)
    ones = tr.time_text_embed(torch.zeros(2), torch.full((2,), 1000.0), pooled)  # guidance 1 (x1000, as FLUX)
    target = tr.time_text_embed(t * 1000, torch.full((2,), 3500.0), pooled)
    assert torch.equal(temb_0, ones) and torch.equal(temb_t, target)
    assert not torch.allclose(ones, tr.time_text_embed(torch.zeros(2), torch.full((2,), 3500.0), pooled))
    assert load_config(None, ["data.train=x"]).model.ref_guidance == 1.0  # the default every run logs


# ---------------------------------------------------------------- 2. reference preprocessing

def test_reference_preprocessing_is_upstream_process_image_on_a_non_square_image(tmp_path):
    """utils.process_image(path, 64, scale=0.9): a 40x20 subject in a 100x50 photo on white is cropped to its
    box, its long side becomes int(64 * 0.9) = 57 (short: int(20 * 57.6 / 40) = 28), pasted at ((64 - 57) // 2,
    (64 - 28) // 2) = (3, 18) on white. The old centre crop cut the subject."""
    a = np.full((50, 100, 3), 255, np.uint8)
    a[10:30, 5:45] = (200, 30, 40)  # the subject, off-centre, in a wide image
    path = tmp_path / "wide.png"
    Image.fromarray(a).save(path)
    out = prepare_reference(path, 64)  # what the sampler feeds by default
    subject = np.zeros((64, 64), bool)
    subject[18:18 + 28, 3:3 + 57] = True
    assert out.shape == (64, 64, 3)
    assert (out[~subject] == 255).all()
    assert (np.abs(out[subject].astype(int) - (200, 30, 40)) <= 1).all()  # Lanczos on a flat colour
    fitted = prepare_reference(path, 64, "fit")  # centre crop: columns 25..75 of 100, most of the subject lost
    assert (np.abs(fitted.astype(int) - (200, 30, 40)).sum(-1) < 10).mean() < 0.15
    rgba = np.zeros((20, 10, 4), np.uint8)  # transparent pixels become white before the box is taken
    rgba[5:15, 2:8] = (0, 0, 255, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    cut = upstream_reference(tmp_path / "cut.png", 20)  # 6x10 box -> int(18 * 6 / 10) = 10 x 18 at (5, 1)
    assert (cut[1:19, 5:15] == (0, 0, 255)).all() and (cut[:, :5] == 255).all() and (cut[0] == 255).all()


# ---------------------------------------------------------------- 3. LoRA init

def test_lora_init_is_upstream_gaussian():
    """peft init_lora_weights="gaussian": A ~ N(0, 1/rank), B = 0; kaiming-uniform A has std 1/sqrt(3 fan_in)."""
    rank = 64
    m = build_model("debug", lora=LoraSpec(rank=rank))
    a = torch.cat([p.flatten() for n, p in m.named_parameters() if "lora_A" in n])
    b = torch.cat([p.flatten() for n, p in m.named_parameters() if "lora_B" in n])
    assert (b == 0).all() and abs(a.mean().item()) < 0.1 / rank
    assert abs(a.std().item() * rank - 1) < 0.05  # 1/rank = 0.0156; kaiming here would be 1/sqrt(96) = 0.102
    k = build_model("debug", lora=LoraSpec(rank=rank, init="kaiming"))
    ka = torch.cat([p.flatten() for n, p in k.named_parameters() if "lora_A" in n])
    assert ka.std().item() * rank > 3
    assert load_config(None, ["data.train=x"]).model.lora_init == "gaussian"


# ---------------------------------------------------------------- 4. EMA export

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("fidelity-data") / "train", 8, 0, "train", 1, 3)


def test_ema_export_is_upstream_constant_decay_taken_before_each_update(tmp_path, data, monkeypatch):
    """train.py: ema = copy(init); each step, before optimizer.step: ema.lerp_(p, 1 - decay). lora.safetensors is
    that EMA, lora_raw.safetensors the trained weights (upstream saves both)."""
    import mosaic.train.loop as loop

    seen, original = [], loop.forward_losses

    def spy(engine, *a, **k):  # the LoRA as it is before this step's update
        seen.append({k: v.clone() for k, v in engine.module.lora_state_dict().items()})  # a copy: CPU tensors alias
        return original(engine, *a, **k)
    monkeypatch.setattr(loop, "forward_losses", spy)
    cfg = load_config(None, [f"data.train={data}", "data.val=null", "model.flavour=debug", "train.steps=4",
                             "train.batch_size=2", "train.checkpoint_every=0", "train.lr=0.05", "train.ema_decay=0.6",
                             "tracking.enabled=false", f"train.output_dir={tmp_path / 'run'}"])
    train(cfg)
    ema = {k: v.clone() for k, v in seen[0].items()}
    for p in seen:
        for k in ema:
            ema[k] += (1 - 0.6) * (p[k] - ema[k])
    out, raw = load_file(tmp_path / "run" / "lora.safetensors"), load_file(tmp_path / "run" / "lora_raw.safetensors")
    assert set(out) == set(ema)
    for k, v in ema.items():
        torch.testing.assert_close(out[k], v)
    moved = [k for k in ema if not torch.equal(raw[k], seen[-1][k])]
    assert moved  # the raw export is the weights after the last update, not the EMA
    assert any(not torch.allclose(out[k], raw[k]) for k in out)


# ---------------------------------------------------------------- 5. conditioning dropout

def test_dropout_rates_are_upstream_five_percent_each_and_a_dropped_image_is_zero_tokens():
    cfg = load_config(None, ["data.train=x"])
    n, b = 40_000, 8
    batch = {"prompt": ["p"] * b, "ref_mask": torch.ones(b, 2, dtype=torch.bool),
             "point_mask": torch.ones(b, 2, 3, dtype=torch.bool)}
    image = text = both = 0
    for s in range(n // b):
        out, prompts = apply_dropout(batch, cfg, step_generator(0, 0, s))
        assert out["ref_mask"].all() and out["point_mask"].all()  # kept as tokens, still in SCAL/MDL
        dt = torch.tensor([p == "" for p in prompts])
        image += int((out["ref_zero"] & ~dt).sum())
        text += int((dt & ~out["ref_zero"]).sum())
        both += int((dt & out["ref_zero"]).sum())
    sd = (0.05 * 0.95 / n) ** 0.5
    for count in (image, text, both):
        assert abs(count / n - 0.05) < 4 * sd
    codec = build_codec("debug")
    imgs = {"target": torch.rand(2, 3, 32, 32), "refs": torch.rand(2, 1, 3, 16, 16),
            "ref_mask": torch.ones(2, 1, dtype=torch.bool), "ref_zero": torch.tensor([True, False])}

    class Text:
        def encode(self, prompts):
            return torch.zeros(len(prompts), 2, 4), torch.zeros(len(prompts), 4)
    enc = encode_batch(Components(None, codec, Text(), torch.device("cpu")), imgs, ["a", "b"], with_refs=True)
    assert (enc.refs[0] == 0).all() and (enc.refs[1] != 0).any() and enc.ref_mask.all()


# ---------------------------------------------------------------- 6. reference latents (VAE posterior)

def test_training_target_is_a_posterior_draw_and_the_mode_without_a_generator():
    """train.py: target `latent_dist.sample()`, references `.mode()`; flux_omini.encode_images: sampled
    references `.sample()`. A codec draws with the generator it is given, the mode without one."""
    from mosaic.model.codec import random_vae_codec

    codec = random_vae_codec()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    dist = codec.vae.encode(x).latent_dist
    drawn = codec.encode(x, torch.Generator().manual_seed(5))
    by_hand = (dist.sample(torch.Generator().manual_seed(5)) - codec.shift) * codec.scale
    from mosaic.model.codec import pack
    torch.testing.assert_close(drawn, pack(by_hand))
    torch.testing.assert_close(codec.encode(x), pack((dist.mode() - codec.shift) * codec.scale))
    assert load_config(None, ["data.train=x"]).model.vae_posterior == "upstream"


# ---------------------------------------------------------------- 7. K = 1 pairs, described collage prompts

def _source(root, n=3, size=32):
    rng = np.random.default_rng(0)
    with DatasetWriter(root) as w:
        for i in range(n):
            mask = np.zeros((size, size), bool)
            mask[8:24, 8:24] = True
            pts = np.array([[4, 4, 10, 10], [6, 6, 12, 12]], np.int32)
            w.add(Sample(f"s{i}", f"A photo of thing{i} on a table, lit from the left.",
                         rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                         [Reference(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), f"thing{i}", pts, f"id{i}")],
                         mask[None]))
    return root


def test_k1_samples_are_the_pairs_and_collages_keep_each_description(tmp_path):
    src = _source(tmp_path / "src")
    out = write_collages(src, tmp_path / "out", 12, [1, 2], seed=0,
                         layout=CollageLayout(canvas_size=(32, 32), scale_range=(0.5, 0.9)))
    recs, sources = list(read_manifest(out)), {r["id"]: r for r in read_manifest(src)}
    assert {r["k"] for r in recs} == {1, 2}
    for r in recs:
        if r["k"] == 1:  # the pair itself: its own scene and its description
            s = sources[r["meta"]["sources"][0]]
            assert r["prompt"] == s["prompt"]
            same = np.asarray(Image.open(out / r["target"])) == np.asarray(Image.open(src / s["target"]))
            assert same.all()
        else:
            for sid in r["meta"]["sources"]:
                assert sources[sid]["prompt"] in r["prompt"]


# ---------------------------------------------------------------- 8. official XVerse on XVerseBench

FAKE_XVERSE = {
    "src/__init__.py": "", "src/flux/__init__.py": "", "src/utils/__init__.py": "",
    "src/flux/generate.py": """
        CALLS = []
        def generate_from_test_sample(test_sample, pipe, config, **kw):
            from PIL import Image
            CALLS.append((test_sample, dict(config["model"]), kw))
            return Image.new("RGB", (8, 8))
    """,
    "src/flux/pipeline_tools.py": """
        CALLS = []
        class _T:
            def unload_lora(self): CALLS.append("unload_lora")
        class _Pipe:
            transformer = _T()
            def unload_lora_weights(self): CALLS.append("unload_lora_weights")
            def to(self, device): return self
        class CustomFluxPipeline:
            def __init__(self, config, device, ckpt_root=None, torch_dtype=None):
                CALLS.append(("pipeline", ckpt_root, config["model"]["use_dit_lora"]))
                self.pipe = _Pipe()
            def clear_modulation_adapters(self): pass
            def add_modulation_adapter(self, a): pass
        def load_modulation_adapter(model, config, dtype, device, path, is_training=False):
            CALLS.append(("modulation", path))
        def load_dit_lora(model, pipe, config, dtype, device, ckpt_dir=None, is_training=False):
            CALLS.append(("dit_lora", ckpt_dir))
    """,
    "src/utils/data_utils.py": """
        import yaml
        def get_train_config(path):
            with open(path) as f:
                return yaml.safe_load(f)
    """,
    "train/config/XVerse_config_INF.yaml": """
        model: {use_dit_lora: true, control_weight_lambda: "0-1:1/3/5", dit_quant: int8-quanto}
        train: {dataset: {condition_pad_to: square}}
    """,
    "train/config/XVerse_config_demo.yaml": """
        model: {use_dit_lora: false, dit_quant: int8-quanto}
        train: {dataset: {condition_pad_to: square}}
    """,
}


@pytest.fixture
def fake_xverse(tmp_path, monkeypatch):
    repo = tmp_path / "XVerse"
    for rel, text in FAKE_XVERSE.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(textwrap.dedent(text))
    for rel in ("checkpoints/XVerse/modulation_adapter", "checkpoints/FLUX.1-dev", "checkpoints/clip-vit-large-patch14"):
        (repo / rel).mkdir(parents=True)
    (repo / "checkpoints/XVerse/pytorch_lora_weights.safetensors").write_bytes(b"")
    for var in ("FLUX_MODEL_PATH", "CLIP_MODEL_PATH"):
        monkeypatch.delenv(var, raising=False)
    for name in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(repo))
    yield repo
    for name in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
        del sys.modules[name]


def test_xverse_official_runs_the_benchmark_protocol_dit_lora_and_human_weights(fake_xverse, tmp_path):
    """idip_gen_split_idip.py: the INF config (use_dit_lora) with load_dit_lora from the checkpoint folder, and
    generate_from_test_sample(use_idip=True), where a reference whose path holds "human" takes the ID weight of
    "0-1:1/3/5" (3) and any other the IP weight (5)."""
    from baselines.official.xverse import XVerseOfficial

    refs = []
    for folder in ("human", "animal"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / folder / "ref.png")
        refs.append(tmp_path / folder / "ref.png")
    x = XVerseOfficial(repo=fake_xverse, device="cpu")
    x.generate("a woman and a dog", refs, 42, phrases=["a woman", "a dog"])
    import src.flux.generate as gen
    import src.flux.pipeline_tools as tools

    assert ("pipeline", "./checkpoints/XVerse", True) in tools.CALLS and ("dit_lora", "./checkpoints/XVerse") in tools.CALLS
    sample, model_cfg, kw = gen.CALLS[-1]
    assert kw["use_idip"] is True and kw["seed"] == 42
    flags = [w[-1] for w in sample["modulation"][0]["use_words"]]
    global_w, id_w, ip_w = model_cfg["control_weight_lambda"].split(":")[1].split("/")
    assert [float(id_w) if f else float(ip_w) for f in flags] == [3.0, 5.0]


# ---------------------------------------------------------------- 9. official DreamO

def test_dreamo_official_checks_the_v11_files_and_its_pinned_commit(tmp_path):
    from baselines.official.base import OfficialUnavailable
    from baselines.official.dreamo import COMMIT, DreamOOfficial

    d = DreamOOfficial.__new__(DreamOOfficial)
    d.repo, d.settings = tmp_path, dict(DreamOOfficial.DEFAULTS)
    models = tmp_path / "models"
    for f in ("dreamo.safetensors", "dreamo_cfg_distill.safetensors", "dreamo_quality_lora_pos.safetensors",
              "dreamo_quality_lora_neg.safetensors", "diffusion_pytorch_model.safetensors", "BEN2_Base.pth"):
        (models / f).parent.mkdir(parents=True, exist_ok=True)
        (models / f).write_bytes(b"")
    (models / "black-forest-labs" / "FLUX.1-dev").mkdir(parents=True)
    missing = d.missing_weights()  # the v1 files only: v1.1 needs its SFT and DPO LoRAs
    assert len(missing) == 2 and "v1.1/dreamo_sft_lora.safetensors" in missing[0] and "dpo" in missing[1]
    (models / "v1.1").mkdir()
    for f in ("dreamo_sft_lora.safetensors", "dreamo_dpo_lora.safetensors"):
        (models / "v1.1" / f).write_bytes(b"")
    assert d.missing_weights() == []
    (tmp_path / "dreamo_generator.py").write_text("")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    with pytest.raises(OfficialUnavailable, match=COMMIT):
        d._require_code()


# ---------------------------------------------------------------- 10. official UNO

def test_uno_official_samples_dreambench_with_its_own_seeds(tmp_path, monkeypatch):
    """UNO inference.py: seed=args.seed + j (3407 + j) for the j-th image of a prompt."""
    import baselines.sample as bs
    from baselines.official.uno import UnoOfficial
    from mosaic.inference.sampler import Request

    class Fake(UnoOfficial):
        def __init__(self, **kw):
            self.settings = dict(self.DEFAULTS)

        def generate(self, prompt, references, seed, phrases=None, **settings):
            return Image.new("RGB", (8, 8), (seed % 256, 0, 0))
    monkeypatch.setattr(bs, "get_baseline", lambda name: Fake)
    out = bs.sample_baseline("uno-official", [Request("p0", "a dog", [])], [0, 1, 2, 3], tmp_path / "o",
                             benchmark="dreambench")
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in lines] == [3407, 3408, 3409, 3410]
    assert UnoOfficial.protocol_seeds("xversebench", [42, 43]) == [42, 43]
