import math

import pytest
import torch

from lmbench.nn.bottleneck import softargmax
from lmbench.nn.laplace import (
    heatmap_moments,
    heatmap_pixels_to_normalized,
    heatmap_spread,
    laplace_kl,
    laplace_kl_loss,
    normalized_to_heatmap_pixels,
)


def numerical_kl(m1, b1, m2, b2) -> float:
    """KL(L(m1,b1) || L(m2,b2)) by the trapezoid rule on a fine grid (float64)."""
    x = torch.linspace(-80.0, 80.0, 800_001, dtype=torch.float64)
    log_p = -(x - m1).abs() / b1 - math.log(2 * b1)
    log_q = -(x - m2).abs() / b2 - math.log(2 * b2)
    return float(torch.trapezoid(log_p.exp() * (log_p - log_q), x))


@pytest.mark.parametrize(
    "m1, b1, m2, b2",
    [(0.0, 1.0, 0.0, 1.0), (0.3, 1.0, 0.0, 1.0), (2.0, 0.5, -1.0, 1.0), (-1.5, 3.0, 0.5, 0.7), (0.0, 0.2, 4.0, 2.0)],
)
def test_closed_form_matches_numerical_integration(m1, b1, m2, b2):
    closed = float(laplace_kl(torch.tensor(m1, dtype=torch.float64), torch.tensor(b1, dtype=torch.float64),
                              torch.tensor(m2, dtype=torch.float64), torch.tensor(b2, dtype=torch.float64)))
    assert closed == pytest.approx(numerical_kl(m1, b1, m2, b2), abs=1e-6, rel=1e-5)


def test_kl_is_zero_only_for_equal_distributions():
    assert float(laplace_kl(1.0, 2.0, 1.0, 2.0)) == pytest.approx(0.0, abs=1e-7)
    assert float(laplace_kl(1.0, 2.0, 1.1, 2.0)) > 0
    assert float(laplace_kl(1.0, 2.0, 1.0, 2.2)) > 0


def one_hot_logits(h, w, row, col, height=1e4):
    logits = torch.zeros(1, 1, h, w)
    logits[0, 0, row, col] = height
    return logits


def test_delta_map_has_zero_spread_and_its_pixel_centre_as_mean():
    probs = torch.softmax(one_hot_logits(6, 8, row=2, col=5).flatten(), 0).view(1, 1, 6, 8)
    mean, scale = heatmap_moments(probs)
    assert mean[0, 0].tolist() == pytest.approx([5.5, 2.5])
    assert scale.abs().max() < 1e-6
    assert float(heatmap_spread(one_hot_logits(6, 8, 2, 5), beta=1.0)) < 1e-6


def test_uniform_map_spread_is_the_mean_absolute_deviation_of_pixel_centres():
    # x: centres 0.5..7.5 around 4 -> |dev| = 3.5, 2.5, 1.5, 0.5 (twice): mean 2.0
    # y: centres 0.5..5.5 around 3 -> |dev| = 2.5, 1.5, 0.5 (twice): mean 1.5
    logits = torch.zeros(2, 3, 6, 8)
    _, scale = heatmap_moments(torch.full((2, 3, 6, 8), 1 / 48))
    assert torch.allclose(scale[..., 0], torch.tensor(2.0))
    assert torch.allclose(scale[..., 1], torch.tensor(1.5))
    assert torch.allclose(heatmap_spread(logits, beta=10.0), torch.tensor(1.75))
    # odd side 5: centres 0.5..4.5 around 2.5 -> |dev| = 2, 1, 0, 1, 2: mean 1.2
    assert float(heatmap_spread(torch.zeros(1, 1, 5, 5), beta=1.0)) == pytest.approx(1.2)


def test_mean_agrees_with_softargmax_and_coordinate_round_trip():
    logits = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(logits.flatten(2) * 3, -1).view_as(logits)
    mean, _ = heatmap_moments(probs)
    assert torch.allclose(heatmap_pixels_to_normalized(mean, (8, 8)), softargmax(logits, 1 / 3), atol=1e-6)
    p = torch.rand(3, 5, 2) * 2 - 1
    assert torch.allclose(heatmap_pixels_to_normalized(normalized_to_heatmap_pixels(p, (8, 16)), (8, 16)), p, atol=1e-6)


def laplace_logits(centre, scale, size=16):
    """log of a separable Laplace density centred at ``centre`` (heatmap px) on the pixel centres."""
    c = torch.arange(size, dtype=torch.float32) + 0.5
    return -((c[None, :] - centre[0]).abs() + (c[:, None] - centre[1]).abs()).div(scale).view(1, 1, size, size)


@pytest.mark.parametrize("direction", ["target_pred", "pred_target"])
def test_loss_prefers_the_right_place_and_a_concentrated_map(direction):
    target = heatmap_pixels_to_normalized(torch.tensor([[[8.0, 8.0]]]), (16, 16))
    loss = lambda logits: float(laplace_kl_loss(logits, target, beta=1.0, target_scale=1.0, direction=direction))
    right = loss(laplace_logits((8.0, 8.0), 1.0))
    assert right < loss(laplace_logits((10.0, 8.0), 1.0))  # wrong place
    assert right < loss(laplace_logits((8.0, 8.0), 4.0))  # too spread
    assert right < 0.05  # the discretised Laplace of scale 1 is close to the target


def test_gradients_reach_every_map():
    logits = torch.randn(2, 5, 8, 8, requires_grad=True)
    target = torch.rand(2, 5, 2) * 1.6 - 0.8
    laplace_kl_loss(logits, target, beta=10.0).backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad.flatten(2).abs().sum(-1) > 0).all()


def test_one_hot_maps_give_a_finite_loss_and_gradient():
    logits = one_hot_logits(8, 8, 3, 3).requires_grad_()
    value = laplace_kl_loss(logits, torch.zeros(1, 1, 2), beta=10.0, direction="pred_target")
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="direction"):
        laplace_kl_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2), beta=1.0, direction="sideways")
    with pytest.raises(ValueError, match="target_scale"):
        laplace_kl_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2), beta=1.0, target_scale=0.0)
