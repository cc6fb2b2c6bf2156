"""The trainer's held-out mechanism evaluation: batched mask shares over padded references."""
import torch

from mosaic.mechanism import mask_shares


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
