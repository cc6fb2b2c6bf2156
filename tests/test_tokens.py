"""Token mapping and disjointness (mosaic.data.tokens)."""
import numpy as np
import pytest

from mosaic.data.tokens import (CorrespondenceConflict, map_correspondences, mask_to_tokens, pixel_to_token,
                                token_grid)


def test_token_grid_flux_and_tiny():
    assert token_grid((512, 512), 8, 2) == (32, 32)
    assert token_grid((96, 96), 4, 2) == (12, 12)
    with pytest.raises(ValueError, match="multiple"):
        token_grid((100, 96), 4, 2)


def test_pixel_to_token_row_major():
    # 512x768 px image, 16 px per token -> 32 rows x 48 cols.
    assert pixel_to_token(0, 0, (512, 768), 8, 2) == 0
    assert pixel_to_token(15, 15, (512, 768), 8, 2) == 0
    assert pixel_to_token(0, 16, (512, 768), 8, 2) == 1
    assert pixel_to_token(16, 0, (512, 768), 8, 2) == 48
    assert pixel_to_token(511, 767, (512, 768), 8, 2) == 32 * 48 - 1
    with pytest.raises(ValueError, match="outside"):
        pixel_to_token(512, 0, (512, 768), 8, 2)


def test_reference_offsets_and_target_indices():
    # Two references of different sizes: global index = local + tokens of earlier references.
    p0 = np.array([[0, 0, 0, 0], [8, 8, 40, 40]])  # ref 0 is 16x16 px at 8 px/token -> 2x2 = 4 tokens
    p1 = np.array([[9, 1, 80, 9]])  # ref 1 is 24x24 px -> 3x3 tokens; (9,1) -> row 1, col 0 -> local 3
    tc = map_correspondences([p0, p1], [(16, 16), (24, 24)], (96, 96), 4, 2)
    assert tc.ref_index.tolist() == [0, 0, 1]
    assert tc.ref_token.tolist() == [0, 3, 3]
    assert tc.global_ref_token.tolist() == [0, 3, 4 + 3]
    # target (40,40) -> row 5, col 5 of a 12x12 grid -> 65; (80, 9) -> row 10, col 1 -> 121
    assert tc.target_token.tolist() == [0, 65, 121]
    assert tc.dropped == 0


def test_conflicts_dropped_deterministically_and_counted():
    # Ref 0 has two pixels on target token 0, ref 1 has one: ref 0 owns it, ref 1's point is dropped.
    p0 = np.array([[0, 0, 0, 0], [1, 1, 1, 1]])
    p1 = np.array([[0, 0, 2, 2], [0, 0, 50, 50]])
    tc = map_correspondences([p0, p1], [(16, 16), (16, 16)], (96, 96), 4, 2)
    assert tc.dropped == 1
    assert tc.for_reference(1)[1].tolist() == [pixel_to_token(50, 50, (96, 96), 4, 2)]
    owners = {}
    for k, t in zip(tc.ref_index, tc.target_token):
        assert owners.setdefault(int(t), int(k)) == int(k)
    # Ties go to the lower reference index, independent of input order within a reference.
    tie = map_correspondences([p1[:1], p0[:1]], [(16, 16), (16, 16)], (96, 96), 4, 2)
    assert tie.dropped == 1 and tie.ref_index.tolist() == [0] and tie.target_token.tolist() == [0]
    with pytest.raises(CorrespondenceConflict, match="target token 0"):
        map_correspondences([p0, p1], [(16, 16), (16, 16)], (96, 96), 4, 2, strict=True)


def test_majority_target_per_reference_token():
    # Three pixels of reference token 0: two land on target token 1, one on target token 0.
    p = np.array([[0, 0, 0, 8], [1, 1, 1, 9], [2, 2, 0, 0]])
    tc = map_correspondences([p], [(16, 16)], (96, 96), 4, 2)
    assert tc.ref_token.tolist() == [0] and tc.target_token.tolist() == [1]


def test_random_inputs_give_single_owner_per_target_token():
    rng = np.random.default_rng(0)
    pts = [np.stack([rng.integers(0, 48, 300), rng.integers(0, 48, 300), rng.integers(0, 96, 300),
                     rng.integers(0, 96, 300)], 1) for _ in range(4)]
    tc = map_correspondences(pts, [(48, 48)] * 4, (96, 96), 4, 2)
    for t in np.unique(tc.target_token):
        assert len(np.unique(tc.ref_index[tc.target_token == t])) == 1
    # each (reference, reference token) appears once
    assert len({(int(k), int(r)) for k, r in zip(tc.ref_index, tc.ref_token)}) == len(tc.ref_index)
    assert tc.dropped > 0


def test_mask_to_tokens():
    m = np.zeros((16, 16), bool)
    m[:8, :8] = True  # exactly token (0, 0) at 8 px per token
    m[8:12, 8:16] = True  # half of token (1, 1)
    t = mask_to_tokens(m, 4, 2)
    assert t.tolist() == [[True, False], [False, True]]
    assert mask_to_tokens(m, 4, 2, threshold=0.75).tolist() == [[True, False], [False, False]]
