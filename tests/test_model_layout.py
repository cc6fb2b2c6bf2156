"""Token layout and RoPE position ids (left = OminiControl/upstream MOSAIC, diagonal = UNO's UnoPE)."""
import pytest
import torch

from mosaic.model.layout import TokenLayout, position_ids


def test_layout_spans_and_indices():
    lay = TokenLayout(n_text=5, n_target=6, n_ref=4, k_max=3)
    assert (lay.ref_start, lay.n) == (11, 23)
    assert (lay.text, lay.target, lay.refs) == (slice(0, 5), slice(5, 11), slice(11, 23))
    assert lay.ref(2) == slice(19, 23)
    with pytest.raises(IndexError):
        lay.ref(3)
    local = torch.tensor([[[0, 3], [1, 2], [3, 0]]])  # [B=1, K=3, P=2]
    assert lay.ref_index(local).tolist() == [[[11, 14], [16, 17], [22, 19]]]
    assert lay.target_index(torch.tensor([0, 5])).tolist() == [5, 10]


def test_left_scheme_ids():
    lay = TokenLayout(2, 6, 4, 2)  # target 2x3, refs 2x2
    ids = position_ids(lay, (2, 3), (2, 2), "left")
    assert ids[:2].tolist() == [[0, 0, 0]] * 2
    assert ids[lay.target].tolist() == [[0, r, c] for r in range(2) for c in range(3)]
    assert ids[lay.ref(0)].tolist() == [[0, r, c - 2] for r in range(2) for c in range(2)]
    assert ids[lay.ref(1)].tolist() == [[0, r, c - 4] for r in range(2) for c in range(2)]


def test_diagonal_scheme_ids():
    lay = TokenLayout(1, 6, 4, 3)  # target 2x3, refs 2x2
    ids = position_ids(lay, (2, 3), (2, 2), "diagonal")
    # UNO prepare_multi_ip(pe="d"): offsets start at the target grid and grow by each reference's size
    for k, (r0, c0) in enumerate([(2, 3), (4, 5), (6, 7)]):
        assert ids[lay.ref(k)].tolist() == [[0, r0 + r, c0 + c] for r in range(2) for c in range(2)]


def test_bad_grid_and_scheme():
    lay = TokenLayout(1, 6, 4, 1)
    with pytest.raises(ValueError, match="target_grid"):
        position_ids(lay, (3, 3), (2, 2), "left")
    with pytest.raises(ValueError, match="ref_grid"):
        position_ids(lay, (2, 3), (1, 2), "left")
    with pytest.raises(ValueError, match="pos_scheme"):
        position_ids(lay, (2, 3), (2, 2), "spiral")
