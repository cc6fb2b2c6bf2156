"""bench/reference_use.py: the own / other / no-reference losses that tell whether a LoRA reads its references."""
import math

import pytest
import torch

from bench.reference_use import other_scene, reference_losses
from mosaic.components import build_components
from mosaic.config import load_config
from mosaic.data.dataset import load_dataset
from mosaic.data.synthetic import generate_dataset
from mosaic.flow import encode_batch
from mosaic.inference.sampler import Sampler


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = generate_dataset(tmp_path_factory.mktemp("refuse") / "d", 4, 0, "train", 1, 2)
    cfg = load_config(None, [f"data.train={root}", "model.flavour=debug", "train.mode=lora"])
    parts = build_components(cfg, torch.device("cpu"))
    with torch.no_grad():  # a LoRA that is not the identity, so the references' branch is changed
        for name, p in parts.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    sampler = Sampler(parts, cfg.data.target_size, cfg.data.ref_size)
    return sampler, load_dataset(root, cfg, parts.codec, parts.model.max_refs)


def test_other_scene_gives_every_scene_another_scenes_references(setup):
    sampler, ds = setup
    from mosaic.data.dataset import collate

    b = collate([ds[i] for i in range(3)])
    enc = encode_batch(sampler.parts, b, b["prompt"], with_refs=True)
    rolled = other_scene(enc)
    for i in range(3):
        assert torch.equal(rolled.refs[i], enc.refs[i - 1]) and torch.equal(rolled.ref_mask[i], enc.ref_mask[i - 1])
        assert not torch.equal(rolled.refs[i], enc.refs[i])
    with pytest.raises(ValueError, match="at least two"):
        other_scene(encode_batch(sampler.parts, collate([ds[0]]), [ds[0]["prompt"]], with_refs=True))


def test_the_arms_differ_and_the_subject_share_is_a_share(setup):
    sampler, ds = setup
    res = reference_losses(sampler, ds, n=4, ts=[0.5, 0.9], batch=4)
    assert set(res) == {(t, a) for t in (0.5, 0.9) for a in ("own", "other", "none", "subject share")}
    assert all(math.isfinite(v) and v > 0 for v in res.values())
    for t in (0.5, 0.9):
        assert res[(t, "own")] != res[(t, "other")] != res[(t, "none")]  # references change the prediction
        assert 0 < res[(t, "subject share")] < 1
    assert res == reference_losses(sampler, ds, n=4, ts=[0.5, 0.9], batch=4)  # the same noise: reproducible
