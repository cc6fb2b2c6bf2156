"""Alignment accuracy and leakage: the pure functions and their registration in evaluation."""
import json

import numpy as np
import pytest
from PIL import Image

from metrics.evaluate import evaluate
from metrics.manifest import read_items
from mosaic.inference.attention_scores import alignment_accuracy, leakage, point_hits, reference_maps


def one_hot_rows(tokens, t):
    a = np.full((len(tokens), t), 0.01)
    a[np.arange(len(tokens)), tokens] = 1.0
    return a


def test_alignment_counts_points_within_one_token_chebyshev():
    grid = (4, 5)  # token (r, c) -> r * 5 + c
    gt = np.array([0, 6, 12, 19])
    pred = np.array([6, 18, 12, 7])  # (1,1) vs (0,0): 1 -> hit; (3,3) vs (1,1): 2 -> miss; same; (1,2) vs (3,4): miss
    hits = point_hits(one_hot_rows(pred, 20), gt, grid)
    assert hits.tolist() == [True, False, True, False]
    assert alignment_accuracy(one_hot_rows(pred, 20), gt, grid) == 0.5
    assert alignment_accuracy(one_hot_rows(pred, 20), gt, grid, tolerance=2) == 1.0


def test_alignment_does_not_wrap_across_rows():
    # token 4 is the end of row 0, token 5 the start of row 1: adjacent indices, 4 columns apart
    assert not point_hits(one_hot_rows([5], 10), np.array([4]), (2, 5)).item()


def test_alignment_rejects_grid_mismatch():
    with pytest.raises(ValueError, match="grid 3x3"):
        alignment_accuracy(np.ones((2, 10)), np.array([0, 1]), (3, 3))


def test_leakage_is_mass_in_other_subjects_masks():
    masks = np.zeros((3, 6), bool)
    masks[0, [0, 1]] = True
    masks[1, [2, 3]] = True
    masks[2, [3, 4]] = True  # overlaps subject 1 at token 3
    maps = np.array([[0.5, 0.0, 0.25, 0.0, 0.0, 0.25],  # 0.25 on subject 1's mask
                     [0.0, 0.0, 0.5, 0.5, 0.0, 0.0],  # token 3 is its own (also subject 2's): no leak
                     [0.1, 0.1, 0.1, 0.1, 0.1, 0.5]])  # 0.2 on subject 0, 0.1 on token 2; token 3 is own
    np.testing.assert_allclose(leakage(maps, masks).numpy(), [0.25, 0.0, 0.3])


def test_reference_maps_average_point_rows_and_normalise():
    m = reference_maps([np.array([[1.0, 0.0], [0.0, 3.0]])])
    np.testing.assert_allclose(m.numpy(), [[0.25, 0.75]])


def test_mechanism_metrics_through_evaluate(tmp_path):
    Image.new("RGB", (16, 16), "white").save(tmp_path / "img.png")
    grid = (2, 3)
    masks = np.zeros((2, *grid), bool)
    masks[0, 0, :] = True
    masks[1, 1, :] = True
    attn0 = one_hot_rows([0, 1], 6)  # on its own mask, exact
    attn1 = one_hot_rows([0, 5], 6)  # first point lands on subject 0, 2 columns from its gt 5: miss
    np.savez(tmp_path / "attn.npz", attn0=attn0, gt0=np.array([0, 1]), attn1=attn1, gt1=np.array([5, 5]),
             token_masks=masks)
    line = {"image": "img.png", "prompt": "p", "attention": "attn.npz",
            "references": [{"image": "img.png"}, {"image": "img.png"}]}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(line) + "\n" + json.dumps({**line, "id": "b", "attention": None}) + "\n")
    table, agg, _ = evaluate(read_items(tmp_path / "manifest.jsonl"), {"mechanism": {}})
    acc = table[(table.metric == "alignment accuracy") & (table.id == "img.png")]["value"].tolist()
    assert acc == [100.0, 50.0]
    leak = table[(table.metric == "leakage") & (table.id == "img.png")]["value"].to_numpy()
    expected1 = 100 * (1.02 + 0.03) / 2.1  # attn1's mass on subject 0's tokens 0..2 over its total
    assert leak[0] < 5 and leak[1] == pytest.approx(expected1)
    missing = table[table.id == "b"]
    assert missing["value"].isna().all() and (missing["reason"] == "no attention maps in the manifest").all()


def test_attention_file_must_match_the_reference_count(tmp_path):
    from mosaic.data.records import DataError

    Image.new("RGB", (16, 16), "white").save(tmp_path / "img.png")
    np.savez(tmp_path / "attn.npz", attn0=np.ones((1, 4)), gt0=np.zeros(1, int), token_masks=np.ones((1, 2, 2), bool))
    line = {"image": "img.png", "prompt": "p", "attention": "attn.npz",
            "references": [{"image": "img.png"}, {"image": "img.png"}]}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(DataError, match=rf"{tmp_path}/attn.npz: missing arrays attn1, gt1 \(item img.png, 2 references\)"):
        evaluate(read_items(tmp_path / "manifest.jsonl"), {"mechanism": {}})
