"""Each controlled baseline trains 2 steps on the `debug` flavour through the shared trainer and
generates one image from the trained run."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from baselines.registry import get_baseline
from mosaic.config import load_config
from mosaic.data.records import read_manifest
from mosaic.data.synthetic import generate_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline-data")
    return generate_dataset(root / "train", 8, 0, "train", 1, 3)


@pytest.mark.parametrize("name", ["omnicontrol", "uno", "dreamo", "xverse"])
def test_controlled_baseline_trains_two_steps_and_generates(name, data, tmp_path):
    baseline = get_baseline(name)()
    out = tmp_path / "run"
    result = baseline.train(None, [f"data.train={data}", "data.val=null", "model.flavour=debug",
                                   f"train.output_dir={out}", "train.steps=2", "train.batch_size=2",
                                   "train.checkpoint_every=0", "train.lr=1e-3", "tracking.enabled=false"])
    assert result.status == "finished" and result.step == 2 and (out / "lora.safetensors").is_file()
    cfg = load_config(out / "config.yaml")
    assert cfg.variant == name and cfg.loss.alpha == 0 and cfg.loss.beta == 0
    if name == "uno":
        assert cfg.model.pos_scheme == "diagonal" and [(s.steps, s.max_k) for s in cfg.data.curriculum] == [(1, 1)]
    if name in ("dreamo", "xverse"):  # the extension's modules were trained and exported beside the LoRA
        weights = load_file(out / "extension.safetensors")
        assert weights and any(v.abs().sum() > 0 for k, v in weights.items()
                               if k.startswith(("dreamo_index", "xverse_adapter.shared")))

    rec = read_manifest(data)[0]
    refs = [data / r["image"] for r in rec["references"]]
    phrases = [r["phrase"] for r in rec["references"]]
    img = baseline.generate(rec["prompt"], refs, seed=0, steps=2, phrases=phrases)
    again = get_baseline(name)(run=out).generate(rec["prompt"], refs, seed=0, steps=2, phrases=phrases)
    assert img.size == (96, 96) and np.array_equal(np.asarray(img), np.asarray(again))
    if name in ("dreamo", "xverse"):  # the reloaded extension is the trained one
        ext = baseline.sampler().parts.ext
        assert ext is not None and type(ext).__name__.lower().startswith(name)
        sd = ext.state_dict(baseline.sampler().model)
        assert all(torch.equal(sd[k], v) for k, v in weights.items())
