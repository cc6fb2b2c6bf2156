"""Malformed inputs: a corpus of broken inputs, each fed to the entry point a user would hit.

Every case checks two things:
- the error names the file and the field (or, where that is the documented behaviour, the input
  is skipped and counted);
- no partial output stands in for a finished one: the output does not exist, or the previous
  finished output is byte-identical.
Entry points: `mosaic data validate` / `preview`, the Dataset loader, `mosaic train` (config,
data, weights, NaN guard), model and metric weight loading, and `mosaic eval`.
"""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mosaic.cli import main
from mosaic.config import ConfigError, load_config
from mosaic.data.dataset import MultiSubjectDataset, TokenSpec
from mosaic.data.records import DataError
from mosaic.data.synthetic import generate_dataset, generate_sample
from mosaic.data.validate import validate_dataset

SPEC = TokenSpec((96, 96), (48, 48), 4, 2)  # the synthetic world's sizes, the debug/tiny pixel codec


# ---------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A clean dataset: 3 samples of 2 subjects each; tests break a copy."""
    return generate_dataset(tmp_path_factory.mktemp("clean") / "ds", 3, 0, "train", 2, 2)


@pytest.fixture
def ds(base, tmp_path):
    return Path(shutil.copytree(base, tmp_path / "ds"))


def record(ds, i=0):
    return json.loads((ds / "manifest.jsonl").read_text().splitlines()[i])


def edit_record(ds, fn, i=0):
    path = ds / "manifest.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    fn(recs[i])
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def edit_corr(ds, fn, i=0):
    path = ds / record(ds, i)["correspondences"]
    with np.load(path) as z:
        arrays = {n: z[n] for n in z.files}
    fn(arrays)
    np.savez(path, **arrays)


def snapshot(folder):
    """Every file under `folder` with its bytes (to prove a finished output unchanged)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(capsys, *argv):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out + out.err


def train_cfg(ds, out, *extra):
    return load_config(None, [f"data.train={ds}", "data.val=null", "model.flavour=debug", f"train.output_dir={out}",
                              "train.steps=3", "train.batch_size=1", "train.checkpoint_every=0",
                              "tracking.enabled=false", *extra])


# ---------------------------------------------------------------- broken dataset files

def truncated_target(ds):
    rel = record(ds)["target"]
    data = (ds / rel).read_bytes()
    (ds / rel).write_bytes(data[: len(data) // 2])
    return rel, "target"


def garbage_reference(ds):
    rel = record(ds)["references"][0]["image"]
    (ds / rel).write_bytes(bytes(range(256)) * 8)
    return rel, "references[0].image"


def rgba_reference(ds):  # wrong mode: alpha channel, half transparent
    rel = record(ds)["references"][0]["image"]
    a = np.asarray(Image.open(ds / rel).convert("RGBA")).copy()
    a[: a.shape[0] // 2, :, 3] = 0
    Image.fromarray(a).save(ds / rel)
    return rel, "references[0].image"


def grey_target(ds):  # wrong mode: L where RGB is stored
    rel = record(ds)["target"]
    Image.open(ds / rel).convert("L").save(ds / rel)
    return rel, "target"


def mask_16bit(ds):  # wrong mode: 16-bit where 8-bit L is stored
    rel = record(ds)["references"][1]["mask"]
    m = np.asarray(Image.open(ds / rel)).astype(np.uint16) * 257
    Image.fromarray(m).save(ds / rel)
    assert Image.open(ds / rel).mode.startswith("I;16")
    return rel, "references[1].mask"


def missing_reference(ds):
    rel = record(ds)["references"][1]["image"]
    (ds / rel).unlink()
    return rel, "references[1].image"


def corr_target_out_of_range(ds):
    edit_corr(ds, lambda a: a["ref0"].__setitem__((0, 2), 500))
    return record(ds)["correspondences"], "ref0"


def corr_reference_out_of_range(ds):  # 60 in a 48-px reference: was clamped silently when rescaling
    edit_corr(ds, lambda a: a["ref1"].__setitem__((0, 0), 60))
    return record(ds)["correspondences"], "ref1"


def missing_manifest_field(ds):
    edit_record(ds, lambda r: r.pop("target"))
    return "manifest.jsonl", "target"


@pytest.mark.parametrize("breaks", [truncated_target, garbage_reference, rgba_reference, grey_target, mask_16bit,
                                    missing_reference, corr_target_out_of_range, corr_reference_out_of_range,
                                    missing_manifest_field], ids=lambda f: f.__name__)
def test_broken_dataset_file(ds, tmp_path, capsys, breaks):
    preview = tmp_path / "preview.png"
    assert main(["data", "preview", str(ds), "--out", str(preview)]) == 0  # a finished preview of the clean data
    before = preview.read_bytes()
    rel, field = breaks(ds)

    rc, out = cli(capsys, "data", "validate", ds)
    assert rc == 1 and rel in out and f": {field}" in out, out
    with pytest.raises(DataError) as e:
        data = MultiSubjectDataset(ds, SPEC)
        for i in range(len(data)):
            data[i]
    assert str(ds / rel) in str(e.value) and field in str(e.value)

    rc, out = cli(capsys, "data", "preview", ds, "--out", preview)
    assert rc == 2 and str(ds / rel) in out and field in out, out
    assert preview.read_bytes() == before


# ---------------------------------------------------------------- dataset content

def test_k_zero(ds, tmp_path, capsys):
    edit_record(ds, lambda r: r.update(k=0, references=[]))
    np.savez(ds / record(ds)["correspondences"])
    rc, out = cli(capsys, "data", "validate", ds)
    assert rc == 1 and "manifest.jsonl:1: k: K = 0" in out, out
    with pytest.raises(DataError, match=rf"{ds / 'manifest.jsonl'}: sample train-000000 field k = 0"):
        MultiSubjectDataset(ds, SPEC)

    from mosaic.train import train

    out_dir = tmp_path / "run"
    with pytest.raises(DataError, match=r"manifest\.jsonl: sample train-000000 field k = 0: .*\(1 such samples\)"):
        train(train_cfg(ds, out_dir))
    assert not out_dir.exists()


def test_empty_manifest(ds, tmp_path, capsys):
    (ds / "manifest.jsonl").write_text("")
    rc, out = cli(capsys, "data", "validate", ds)
    assert rc == 1 and "manifest.jsonl: -: empty manifest" in out
    with pytest.raises(DataError, match=rf"{ds / 'manifest.jsonl'}: empty manifest"):
        MultiSubjectDataset(ds, SPEC)

    from mosaic.train import train

    with pytest.raises(DataError, match="empty manifest"):
        train(train_cfg(ds, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_target_token_owned_twice_in_strict_mode(ds, tmp_path):
    """Strict ownership refuses a target token claimed by two references (naming the file); the default
    mode keeps the majority owner and counts the dropped points."""
    edit_corr(ds, lambda a: a.__setitem__("ref1", np.concatenate([a["ref1"], a["ref0"][:40]])))
    corr = record(ds)["correspondences"]
    with pytest.raises(DataError, match=rf"{ds / corr}: target tokens: target token \d+ is claimed by references "
                                        r"\[0, 1\] \(sample train-000000"):
        MultiSubjectDataset(ds, SPEC, strict=True)  # up front, from the correspondence files alone
    assert MultiSubjectDataset(ds, SPEC)[0]["dropped"] > 0  # non-strict: dropped and counted
    problems = validate_dataset(ds, SPEC)
    assert any(p.file == corr and p.field == "target tokens" and "references [0, 1]" in p.message for p in problems)

    from mosaic.train import train

    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"corr\.npz: target tokens: .*strict ownership"):
        train(train_cfg(ds, out, "data.strict=true"))
    assert not out.exists()  # refused before the training starts


# ---------------------------------------------------------------- prompts too long for the text encoder

def _tiny_flux_text(d):
    """FLUX's text folders (CLIP BPE and CLIP-L, T5 unigram and T5 encoder) built offline, tiny and random."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    words = ["a", "red", "circle", "blue", "square"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{w + "</w>": i + 2 for i, w in enumerate(words)}}
    (d / "bpe").mkdir(parents=True)
    (d / "bpe/vocab.json").write_text(json.dumps(vocab))
    (d / "bpe/merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(d / "bpe/vocab.json"), str(d / "bpe/merges.txt"),
                  model_max_length=77).save_pretrained(d / "tokenizer")
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [("\u2581" + w, -1.0) for w in words]
    T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512).save_pretrained(d / "tokenizer_2")
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(d / "text_encoder")
    T5EncoderModel(T5Config(vocab_size=len(pieces), d_model=12, d_kv=4, d_ff=16, num_layers=1,
                            num_heads=2)).save_pretrained(d / "text_encoder_2")


def test_prompt_too_long(ds, tmp_path, capsys, caplog):
    import torch

    from mosaic.model.text import PromptTokens, T5ClipEncoder, build_text_encoder

    enc = build_text_encoder("tiny")
    limit = enc.max_length
    # the sample's own subject phrases (the validator checks the prompt names them), then more subjects
    phrases = " and ".join(ref["phrase"] for ref in record(ds, 1)["references"])
    long = phrases + " and a red striped star" * 9 + " on a grey background"
    words = len(long.split())
    assert words > limit
    edit_record(ds, lambda r: r.update(prompt=long), i=1)
    before = snapshot(ds)
    rc, out = cli(capsys, "data", "validate", ds, "--flavour", "tiny")
    assert rc == 1 and f"manifest.jsonl:2: prompt: too long for the text encoder: {words} words, the encoder keeps " \
                       f"the first {limit}" in out, out
    assert cli(capsys, "data", "validate", ds)[0] == 0  # without a flavour there is no limit to check
    assert snapshot(ds) == before

    caplog.set_level("WARNING", "mosaic.model.text")
    text, _ = enc.encode([long, "a red star"])
    assert enc.truncated == 1 and text.shape[1] == limit
    assert f"prompt truncated ({words} words, the encoder keeps the first {limit})" in caplog.text
    caplog.clear()
    enc.encode([long, long])
    assert enc.truncated == 3 and not caplog.text  # warned once; later truncations are only counted
    # the tiny profile's prompts fit its encoder, up to its largest evaluation K (heldout-k6)
    assert all(enc.overflow(generate_sample(0, "test", i, 6).prompt) is None for i in range(20))

    _tiny_flux_text(tmp_path / "flux")  # FLUX.1-dev's encoders: T5 (here 16 tokens) and CLIP (77)
    tokens = PromptTokens(tmp_path / "flux", max_length=16)
    assert tokens.overflow("a red circle") is None
    assert tokens.overflow(" ".join(["a red circle"] * 6)) == "T5 19 tokens, keeps 16"
    t5 = T5ClipEncoder(tmp_path / "flux", max_length=16, dtype=torch.float32)
    text, _ = t5.encode(["a red circle", " ".join(["a red circle"] * 6)])
    assert t5.truncated == 1 and text.shape[1] == 16 and "T5 19 tokens, keeps 16" in caplog.text
    over = tokens.overflow(" ".join(["a blue square"] * 30))
    assert re.fullmatch(r"T5 91 tokens, keeps 16; CLIP \d+ tokens, keeps 77", over), over


# ---------------------------------------------------------------- training config

@pytest.mark.parametrize("section, key, value", [("train", "steps", "ten"), ("loss", "alpha", -0.1),
                                                  ("loss", "beta", -1.0)], ids=["wrong-type", "negative-alpha",
                                                                                 "negative-beta"])
def test_bad_training_config(base, tmp_path, capsys, section, key, value):
    out = tmp_path / "run"
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": str(base)}, "train": {"output_dir": str(out)},
                                    section: {key: value}}))
    with pytest.raises(ConfigError, match=rf"{path}: {section}\.{key}: "):
        load_config(path)
    rc, err = cli(capsys, "train", "--config", path)
    assert rc == 2 and str(path) in err and f"{section}.{key}" in err, err
    assert not out.exists()


# ---------------------------------------------------------------- weights that hold the wrong model

def test_transformer_weights_of_another_class(base, tmp_path):
    from diffusers import AutoencoderKL

    from mosaic.train import train

    AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4).save_pretrained(
        tmp_path / "w" / "transformer")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=rf"{tmp_path / 'w' / 'transformer' / 'config.json'}: field _class_name = "
                                         r"'AutoencoderKL', expected FluxTransformer2DModel"):
        train(train_cfg(base, out, f"model.weights={tmp_path / 'w'}"))
    assert not out.exists()


def test_transformer_weights_of_the_wrong_shapes(base, tmp_path):
    from mosaic.model import build_model
    from mosaic.train import train

    build_model("tiny", lora=None).save_base(tmp_path / "tiny")
    folder = build_model("debug", lora=None).save_base(tmp_path / "w" / "transformer")
    shutil.copy(tmp_path / "tiny" / "diffusion_pytorch_model.safetensors", folder)  # debug config, tiny tensors
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=rf"{folder}: cannot load FluxTransformer2DModel weights \(.*"
                                         r"context_embedder\.\w+ expected shape"):
        train(train_cfg(base, out, f"model.weights={tmp_path / 'w'}"))
    assert not out.exists()


def test_lora_of_the_wrong_shapes(tmp_path):
    from mosaic.model import LoraSpec, build_model

    path = build_model("debug", lora=LoraSpec(rank=4)).save_lora(tmp_path / "lora.safetensors")
    model = build_model("debug", lora=LoraSpec(rank=8))
    before = {k: v.clone() for k, v in model.lora_state_dict().items()}
    with pytest.raises(ValueError, match=rf"{path}: \S+lora_A\.weight has shape \(4, \d+\), the model expects \(8,"):
        model.load_lora(path)
    after = model.lora_state_dict()
    assert all((after[k] == v).all() for k, v in before.items())  # nothing half-loaded


# ---------------------------------------------------------------- the NaN guard

@pytest.mark.slow  # only for the first DeepSpeed engine of a process on CPU: it JIT-builds its comm op (~1-2 min)
def test_nan_loss_at_a_step(base, tmp_path):
    from mosaic.infra.runfolder import CHECKPOINTS
    from mosaic.train import TrainingError, latest_checkpoint, train

    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=rf"step 3: non-finite loss \(.*total=nan\); stopped before the update; "
                                            rf"last good checkpoint: step_00000002 in {out / CHECKPOINTS}"):
        train(train_cfg(base, out, "train.steps=4", "train.checkpoint_every=2", "train.nan_at_step=3"))
    assert latest_checkpoint(out) == "step_00000002"
    assert [p.name for p in (out / CHECKPOINTS).glob("step_*")] == ["step_00000002"]
    assert not (out / "lora.safetensors").exists()


# ---------------------------------------------------------------- evaluation (mosaic eval)

@pytest.fixture(scope="module")
def metric_models(tmp_path_factory):
    from metrics.tiny_evaluators.clip_training import new_clip, save_clip
    from metrics.tiny_evaluators.dino_training import new_vit, save_dino

    root = tmp_path_factory.mktemp("metric-models")
    save_clip(new_clip(seed=1), root / "clip")
    save_dino(new_vit(seed=2), root / "dino")
    return root


@pytest.fixture
def evalset(tmp_path, metric_models, capsys):
    """A folder of 3 images, its manifest, a metrics config, and a finished eval/ of it."""
    folder = tmp_path / "gen"
    folder.mkdir()
    for i in range(3):
        img = np.random.default_rng(i).integers(0, 256, (40, 56, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")
    lines = [{"image": "img0.png", "prompt": "a red star and a blue disk",
              "references": [{"image": "img1.png"}, {"image": "img2.png"}]},
             {"image": "img1.png", "prompt": "a blue disk", "references": [{"image": "img2.png"}]}]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = tmp_path / "metrics.yaml"
    cfg.write_text(yaml.safe_dump({"dino": {"model": f"local-dir:{metric_models / 'dino'}"},
                                   "clip_i": {"model": f"local-dir:{metric_models / 'clip'}"}}))
    args = ["eval", folder, "--config", cfg, "--metrics", "DINO"]
    rc, out = cli(capsys, *args)
    assert rc == 0, out
    return {"folder": folder, "config": cfg, "args": args, "finished": snapshot(folder / "eval")}


def _eval_fails(evalset, capsys, *args):
    rc, err = cli(capsys, *(args or evalset["args"]))
    assert rc == 2, err
    assert snapshot(evalset["folder"] / "eval") == evalset["finished"]
    return err


def test_eval_unknown_metric_name(evalset, capsys):
    err = _eval_fails(evalset, capsys, *evalset["args"][:-1], "DINO,CLIP-X")
    assert "--metrics: unknown metric name(s) 'CLIP-X'" in err


def test_eval_unknown_metric_config_section(evalset, capsys):
    cfg = evalset["config"]
    cfg.write_text(cfg.read_text() + "dinov2: {model: x}\n")  # misspelt: was silently ignored
    err = _eval_fails(evalset, capsys)
    assert f"{cfg}: section 'dinov2' is no metric's config section" in err


def test_eval_dino_weights_of_another_model(evalset, metric_models, capsys, tmp_path):
    wrong = Path(shutil.copytree(metric_models / "dino", tmp_path / "dino-wrong"))
    shutil.copy(next((metric_models / "clip").glob("*.safetensors")), wrong / "model.safetensors")
    cfg = evalset["config"]
    cfg.write_text(yaml.safe_dump({"dino": {"model": f"local-dir:{wrong}"}}))
    err = _eval_fails(evalset, capsys)
    assert f"dino.model: {wrong / 'model.safetensors'} does not hold" in err


def _break_image(folder, name, how):
    p = folder / name
    if how == "missing":
        p.unlink()
    elif how == "truncated":
        p.write_bytes(p.read_bytes()[:200])
    elif how == "transparent":
        a = np.asarray(Image.open(p).convert("RGBA")).copy()
        a[..., 3] = 0
        Image.fromarray(a).save(p)
    elif how == "16-bit":
        Image.fromarray(np.asarray(Image.open(p).convert("L")).astype(np.uint16) * 257).save(p)


@pytest.mark.parametrize("name, field, how, reason", [
    ("img2.png", "references[1].image", "missing", "image file not found"),
    ("img0.png", "image", "truncated", "unreadable image"),
    ("img2.png", "references[1].image", "transparent", "transparent pixels"),
    ("img0.png", "image", "16-bit", "more than 8 bits per channel"),
])
def test_eval_bad_image(evalset, capsys, name, field, how, reason):
    folder = evalset["folder"]
    _break_image(folder, name, how)
    err = _eval_fails(evalset, capsys)
    assert f"{folder / name}: " in err and reason in err, err
    assert f"(field {field} at {folder / 'manifest.jsonl'}:1)" in err, err


def test_eval_k_zero_is_counted(evalset, capsys):
    folder = evalset["folder"]
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    lines.append(json.dumps({"image": "img2.png", "prompt": "nothing", "references": []}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    rc, out = cli(capsys, *evalset["args"])
    assert rc == 0, out
    import pandas as pd

    table = pd.read_csv(folder / "eval" / "metrics.csv")
    row = table[table["id"] == "img2.png"]
    assert len(row) == 1 and row["value"].isna().all() and (row["reason"] == "K = 0: no references").all()
    agg = pd.read_csv(folder / "eval" / "aggregate.csv")
    pairs = agg[agg.statistic == "mean over (image, reference) pairs"].iloc[0]
    assert (pairs.n, pairs.n_nan, pairs.nan_reasons) == (3, 1, "K = 0: no references: 1")


def test_eval_empty_manifest(evalset, capsys):
    manifest = evalset["folder"] / "manifest.jsonl"
    manifest.write_text("\n")
    err = _eval_fails(evalset, capsys)
    assert f"{manifest}: manifest has no entries" in err
