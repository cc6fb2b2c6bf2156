"""Tiny-world evaluators: trained here (shortened), they separate unseen test identities, and the
metrics built on them behave: CLIP-I's minimum drops when a subject is painted out, IP-Sim with
ground-truth masks prefers the right subject."""
import json

import numpy as np
import pytest
from PIL import Image

from metrics.evaluate import evaluate, image_summary
from metrics.manifest import Item, RefInput
from metrics.tiny_world import roc_auc, train_evaluators
from mosaic.data.synthetic import BACKGROUNDS, generate_sample


def test_roc_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 40).round(1), rng.normal(0, 1, 60).round(1)  # rounding makes ties
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(pos, neg) == pytest.approx(brute)
    assert roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0


@pytest.fixture(scope="module")
def evaluators(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "evaluators"
    # shortened from the defaults (600 / 400 steps, 1500 samples) to keep CI time down
    return train_evaluators(out, clip_steps=400, dino_steps=300, n_train=1000, log=lambda *_: None)


@pytest.mark.slow
def test_evaluators_separate_unseen_test_identities(evaluators):
    v = json.loads((evaluators / "validation.json").read_text())
    assert v["n_identities"] == 40 and v["n_views"] >= 120
    assert v["dino_auc_all_pairs"] >= 0.9, v  # references and scenes alike
    assert v["clip_auc_reference_pairs"] >= 0.9, v
    assert v["clip_auc_reference_vs_scene"] > 0.65, v  # weaker: scene embeddings carry the background
    assert v["clip_caption_top1"] >= 3 * v["clip_caption_top1_chance"], v
    cfg = json.loads((evaluators / "metrics_config.json").read_text())
    assert cfg["clip_i"]["world"] == cfg["dino"]["world"] == "tiny"


def _write_sample(folder, s, name, target):
    Image.fromarray(target).save(folder / f"{name}.png")
    refs = []
    for k, r in enumerate(s.references):
        Image.fromarray(r.image).save(folder / f"{s.id}_ref{k}.png")
        Image.fromarray(s.masks[k].astype(np.uint8) * 255).save(folder / f"{s.id}_mask{k}.png")
        refs.append(RefInput(folder / f"{s.id}_ref{k}.png", word=r.phrase.split()[-1], phrase=r.phrase,
                             category="object", mask=folder / f"{s.id}_mask{k}.png"))
    return Item(name, folder / f"{name}.png", s.prompt, refs, method="test")


@pytest.mark.slow
def test_clip_i_min_drops_when_a_subject_is_painted_out(evaluators, tmp_path):
    cfg = json.loads((evaluators / "metrics_config.json").read_text())
    items, painted = [], []
    for i in range(6):
        s = generate_sample(5, "test", i, 3)
        out = s.target.copy()
        out[s.masks[1]] = BACKGROUNDS[s.meta["background"]["colour"]]  # subject 1 painted out
        items.append(_write_sample(tmp_path, s, f"{s.id}_full", s.target))
        painted.append(_write_sample(tmp_path, s, f"{s.id}_painted", out))
    table, agg, _ = evaluate(items + painted, cfg, ["CLIP-I"])
    assert (table.label == "CLIP-I (tiny-world)").all()
    summary = image_summary(table).set_index("id")["min"]
    drops = [summary[p.id] < summary[f.id] for f, p in zip(items, painted)]
    assert sum(drops) >= 5, summary
    lost = table[table.reference == 1].set_index("id").value
    assert all(lost[p.id] < lost[f.id] for f, p in zip(items, painted))


@pytest.mark.slow
def test_ip_sim_ground_truth_masks_prefer_the_right_subject(evaluators, tmp_path):
    cfg = json.loads((evaluators / "metrics_config.json").read_text())
    right, wrong = [], []
    for i in range(8):
        s = generate_sample(6, "test", i, 2)
        it = _write_sample(tmp_path, s, s.id, s.target)
        right.append(it)
        swapped = [RefInput(r.image, r.word, r.phrase, r.category, mask=it.references[1 - k].mask)
                   for k, r in enumerate(it.references)]
        wrong.append(Item(f"{s.id}_swapped", it.image, it.prompt, swapped))
    table = evaluate(right + wrong, cfg, ["IP-Sim"])[0]
    v = table.set_index(["id", "reference"]).value
    wins = [v[(r.id, k)] > v[(w.id, k)] for r, w in zip(right, wrong) for k in range(2)]
    assert sum(wins) >= 15, table[["id", "reference", "value"]]
