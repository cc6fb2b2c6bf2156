"""The sampler: FLUX's shifted flow-matching schedule, determinism, attention maps, and
`mosaic sample` on a trained debug run writing a manifest that `metrics.manifest` reads."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metrics.manifest import read_items
from mosaic.cli import main
from mosaic.components import Components
from mosaic.config import load_config
from mosaic.data.synthetic import generate_dataset
from mosaic.model import build_codec, build_model, build_text_encoder
from mosaic.inference.sampler import FLUX_SCHEDULER, Sampler, flux_timesteps
from mosaic.train import train


@pytest.fixture(scope="module")
def sampler():
    model = build_model("debug", seed=0)
    with torch.no_grad():  # a non-zero LoRA, so the references matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return Sampler(Components(model, build_codec("debug"), build_text_encoder("debug"), torch.device("cpu")), 96, 48)


def refs(k, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(k)]


def test_timesteps_follow_flux_resolution_shift():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    _, ts = flux_timesteps(10, 144)
    mu = calculate_shift(144, FLUX_SCHEDULER["base_image_seq_len"], FLUX_SCHEDULER["max_image_seq_len"],
                         FLUX_SCHEDULER["base_shift"], FLUX_SCHEDULER["max_shift"])
    sigmas = np.linspace(1, 0.1, 10)
    expected = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    assert np.allclose(ts.numpy() / 1000, expected, atol=1e-5)
    _, ts_big = flux_timesteps(10, 4096)  # more tokens -> larger shift -> later (noisier) timesteps
    assert (ts_big[1:] > ts[1:]).all()


def test_same_seed_same_image_different_seed_different(sampler):
    r = refs(2)
    a, _ = sampler.generate("a red star and a blue moon", r, seed=3, steps=3)
    b, _ = sampler.generate("a red star and a blue moon", r, seed=3, steps=3)
    c, _ = sampler.generate("a red star and a blue moon", r, seed=4, steps=3)
    d, _ = sampler.generate("a red star and a blue moon", refs(2, seed=9), seed=3, steps=3)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, d)  # the references condition the image


def test_classifier_free_guidance_extrapolates_from_the_empty_prompt(sampler):
    r = refs(2)
    plain, _ = sampler.generate("a red star and a blue moon", r, seed=3, steps=3)
    assert np.array_equal(plain, sampler.generate("a red star and a blue moon", r, seed=3, steps=3, cfg_scale=1)[0])
    empty, _ = sampler.generate("", r, seed=3, steps=3)
    # scale 0 is the unconditional velocity alone: the image of the empty prompt, same references
    assert np.array_equal(empty, sampler.generate("a red star and a blue moon", r, seed=3, steps=3, cfg_scale=0)[0])
    guided, _ = sampler.generate("a red star and a blue moon", r, seed=3, steps=3, cfg_scale=3)
    assert not np.array_equal(guided, plain) and not np.array_equal(guided, empty)


def test_attention_maps_are_per_subject_distributions_and_do_not_change_the_image(sampler):
    r = refs(3)
    plain, none = sampler.generate("three things", r, seed=1, steps=2)
    img, maps = sampler.generate("three things", r, seed=1, steps=2, attention=True)
    assert none is None and np.array_equal(plain, img)
    assert maps.shape == (3, 12, 12)
    assert np.allclose(maps.sum((1, 2)), 1, atol=1e-5) and (maps >= 0).all()
    assert not np.allclose(maps[0], maps[1])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample-run")
    data = generate_dataset(root / "train", 4, 0, "train", 1, 3)
    val = generate_dataset(root / "val", 2, 0, "val", 2, 3)
    cfg = load_config(None, [f"data.train={data}", "data.val=null", "model.flavour=debug",
                             f"train.output_dir={root / 'run'}", "train.steps=1", "train.batch_size=2",
                             "train.checkpoint_every=0", "tracking.enabled=false"])
    train(cfg)
    return root / "run", val


def test_mosaic_sample_writes_images_maps_and_a_manifest_metrics_reads(run, tmp_path, capsys):
    run_dir, val = run
    out = tmp_path / "out"
    argv = ["sample", "--run", str(run_dir), "--dataset", str(val), "--seeds", "0", "1", "--steps", "2",
            "--attention", "--out", str(out)]
    assert main(argv) == 0
    items = read_items(out / "manifest.jsonl")
    assert len(items) == 4 and {it.seed for it in items} == {0, 1}
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    for it, line in zip(items, lines):
        assert it.image.is_file() and Image.open(it.image).size == (96, 96)
        assert all(r.image.is_file() for r in it.references) and it.references[0].phrase
        assert it.method == "default"  # the run's variant
        meta = line["meta"]
        assert meta["settings"]["steps"] == 2 and meta["model"]["run"] == str(run_dir.resolve())
        # the debug text encoder keeps 8 words: longer prompts are recorded as cut, with the reason
        assert bool(meta["prompt_truncated"]) == (len(it.prompt.split()) > 8)
        assert len(meta["attention_maps"]) == len(it.references)
        assert all((out / p).is_file() for p in meta["attention_maps"])
    # the same seed through the CLI gives the same image as the library call
    s = Sampler.from_run(run_dir)
    first = items[0]
    img, _ = s.generate(first.prompt, [r.image for r in first.references], first.seed, steps=2,
                        phrases=[r.phrase for r in first.references])
    assert np.array_equal(img, np.asarray(Image.open(first.image)))
    # an existing output folder is never overwritten silently
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err


def test_missing_run_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        Sampler.from_run(tmp_path)


def test_benchmark_manifest_references_resolve_from_the_manifest(tmp_path, monkeypatch):
    """A benchmark root given relative to the working directory (the workflow's `../shared/benchmarks`)
    still gives reference paths that the written manifest resolves from its own folder."""
    from mosaic.inference.sampler import benchmark_requests, write_outputs

    shared = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
    monkeypatch.chdir(shared.parent.parent)
    root = os.path.relpath(shared)
    requests = benchmark_requests("xversebench", "multi", root)[:1]
    out = write_outputs(lambda req, seed: (np.zeros((8, 8, 3), np.uint8), None), requests, [0], tmp_path / "s",
                        "m", {})
    item = read_items(out / "manifest.jsonl")[0]
    assert item.references and all(Path(r.image).is_file() for r in item.references)
