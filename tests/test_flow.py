"""mosaic.flow: the one model step; the prediction switch gives the loss and the sampler one velocity."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mosaic.flow import X0_MIN_T, Encoded, add_noise, to_velocity, velocity
from mosaic.model.flavours import FLAVOURS, Flavour


class Stub(torch.nn.Module):
    """A network whose output is fixed, standing for any network of a flavour."""

    def __init__(self, out, prediction):
        super().__init__()
        self.out, self.flavour = out, dataclasses.replace(FLAVOURS["debug"], prediction=prediction)
        self.seen = {}

    def forward(self, **kw):
        self.seen = kw
        return self.out


def test_both_predictions_give_the_same_velocity_and_loss_for_the_same_output_converted():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    t = torch.tensor([0.9, 0.3, 0.06])
    xt = add_noise(x0, noise, t)
    v_net = torch.randn(3, 5, 4, generator=g)  # what a velocity network outputs
    x0_net = xt - t[:, None, None] * v_net  # the same prediction from an x0 network
    enc = Encoded(x0, None, None, torch.zeros(3, 2, 8), torch.zeros(3, 8), (1, 5), None)
    v_a = velocity(Stub(v_net, "velocity"), enc, xt, t, None)
    v_b = velocity(Stub(x0_net, "x0"), enc, xt, t, None)
    torch.testing.assert_close(v_a, v_b)
    target = noise - x0
    assert torch.allclose(F.mse_loss(v_a, target), F.mse_loss(v_b, target))
    # an exact x0 gives the exact velocity, whatever t above the clamp
    torch.testing.assert_close(to_velocity(x0, xt, t, "x0"), target)


def test_x0_velocity_is_clamped_at_small_t_and_the_call_is_by_keyword():
    x0, xt = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    v = to_velocity(x0, xt, torch.tensor([0.001]), "x0")
    torch.testing.assert_close(v, torch.full_like(xt, 1 / X0_MIN_T))
    stub = Stub(x0, "velocity")
    enc = Encoded(x0, None, None, torch.zeros(1, 2, 8), torch.zeros(1, 8), (1, 2), None)
    velocity(stub, enc, xt, torch.tensor([0.5]), None, extra={"ref_offset": "r"})
    assert stub.seen["target"] is xt and stub.seen["ref_offset"] == "r" and stub.seen["target_grid"] == (1, 2)
    with pytest.raises(ValueError, match="prediction 'eps'"):
        to_velocity(x0, xt, torch.tensor([0.5]), "eps")


def test_a_flavour_names_its_prediction():
    assert FLAVOURS["flux-dev"].prediction == "velocity"
    with pytest.raises(ValueError, match="prediction 'noise' is not one of"):
        Flavour("bad", {}, {}, {}, prediction="noise")
