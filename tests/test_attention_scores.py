"""The trainer's held-out mechanism evaluation: batched mask shares over padded references."""
import torch

from mosaic.inference.attention_scores import mask_shares, subject_leakage


def test_mask_shares_per_valid_reference_ignoring_padding():
    # sample 0: three real references; sample 1: one real reference and two padded ones
    a = torch.tensor([[[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.1, 0.7], [0.25, 0.25, 0.25, 0.25]],
                      [[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]])
    masks = torch.tensor([[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]],
                          [[0, 0, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]], dtype=torch.bool)
    ref_mask = torch.tensor([[True, True, True], [True, False, False]])
    valid = torch.tensor([[True, True, False], [True, False, False]])  # reference (0, 2) has no points
    leak, own = mask_shares(a, masks, ref_mask, valid)
    # ref (0,0): others = tokens 1 and 3 -> 0.3; ref (0,1): tokens 0 and 3 -> 0.8; ref (1,0): padding is no subject
    assert torch.allclose(leak, torch.tensor([0.3, 0.8, 0.0]))
    assert torch.allclose(own, torch.tensor([0.5, 0.1, 1.0]))


def test_subject_leakage_ignores_background_mass():
    # attention moved from the background onto all subjects equally: plain leakage triples, subject leakage stays
    masks = torch.tensor([[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]], dtype=torch.bool)  # token 3: background
    ref_mask = valid = torch.ones(1, 3, dtype=torch.bool)
    diffuse = torch.full((1, 3, 4), 0.25)
    on_subjects = torch.tensor([[[1 / 3, 1 / 3, 1 / 3, 0.0]] * 3])
    grounded = torch.eye(3, 4)[None]
    sl = [subject_leakage(*mask_shares(a, masks, ref_mask, valid)) for a in (diffuse, on_subjects, grounded)]
    assert torch.allclose(sl[0], torch.full((3,), 2 / 3)) and torch.allclose(sl[1], sl[0])
    assert torch.allclose(sl[2], torch.zeros(3))
    assert torch.allclose(subject_leakage(torch.zeros(1), torch.zeros(1)), torch.zeros(1))
