import math

import pytest
import torch

from lmbench.nn.bottleneck import LandmarkBottleneck, pixel_centres, render_gaussians, softargmax, spatial_softmax
from lmbench.nn.hourglass import HourglassDetector


def test_pixel_centres_align_corners_false():
    assert torch.allclose(pixel_centres(4), torch.tensor([-0.75, -0.25, 0.25, 0.75]))


def test_softargmax_of_a_peaked_map_is_its_pixel_centre():
    logits = torch.full((1, 1, 8, 8), -50.0)
    logits[0, 0, 2, 5] = 50.0  # row 2, column 5
    x, y = softargmax(logits, temperature=0.1)[0, 0].tolist()
    assert x == pytest.approx((2 * 5 + 1) / 8 - 1)
    assert y == pytest.approx((2 * 2 + 1) / 8 - 1)


def test_softargmax_hand_computed_two_pixel_mix():
    # Two pixels with logits 0 and log(3) at T=1: weights 1/4 and 3/4.
    logits = torch.full((1, 1, 2, 2), -1e4)
    logits[0, 0, 0, 0] = 0.0
    logits[0, 0, 1, 1] = math.log(3.0)
    x, y = softargmax(logits, temperature=1.0)[0, 0].tolist()
    assert x == pytest.approx(0.25 * -0.5 + 0.75 * 0.5)
    assert y == pytest.approx(0.25 * -0.5 + 0.75 * 0.5)


def test_uniform_map_gives_the_centre():
    assert torch.allclose(softargmax(torch.zeros(2, 3, 5, 7)), torch.zeros(2, 3, 2), atol=1e-6)


def test_temperature_sharpens():
    logits = torch.zeros(1, 1, 1, 2)
    logits[..., 1] = 1.0
    soft = softargmax(logits, temperature=1.0)[0, 0, 0]
    sharp = softargmax(logits, temperature=0.1)[0, 0, 0]
    assert soft == pytest.approx(-0.5 * (1 / (1 + math.e)) + 0.5 * (math.e / (1 + math.e)), rel=1e-5)
    assert sharp > soft


def test_gaussian_hand_computed():
    # Point at the centre of pixel (row 1, col 2) of a 4x4 map, sigma 0.5 px: exp(-d^2 / 0.5).
    point = torch.tensor([[[(2 * 2 + 1) / 4 - 1, (2 * 1 + 1) / 4 - 1]]])
    maps = render_gaussians(point, (4, 4), sigma=0.5)[0, 0]
    assert maps[1, 2] == pytest.approx(1.0)
    assert maps[1, 3] == pytest.approx(math.exp(-1 / 0.5))
    assert maps[2, 3] == pytest.approx(math.exp(-2 / 0.5))


def test_rendered_gaussian_is_recovered_by_softargmax():
    points = torch.tensor([[[0.1, -0.3], [-0.6, 0.45]]])
    maps = render_gaussians(points, (32, 32), sigma=1.5)
    recovered = softargmax(torch.log(maps + 1e-12), temperature=1.0)
    assert torch.allclose(recovered, points, atol=1e-4)


def test_bottleneck_gradients_flow():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    points, maps = LandmarkBottleneck(0.1, 0.5)(logits)
    assert points.shape == (2, 3, 2) and maps.shape == (2, 3, 8, 8)
    (maps.sum() + points.sum()).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_head_init_gain_scales_the_untrained_logits_and_flattens_the_maps():
    images = torch.rand(4, 3, 32, 32)
    logits = {}
    for gain in (1.0, 0.2):
        torch.manual_seed(0)  # same draws: only the head's scale differs
        detector = HourglassDetector(3, channels=8, depth=2, stem_channels=8, head_init_gain=gain).eval()
        with torch.no_grad():
            logits[gain] = detector(images)
    torch.testing.assert_close(logits[0.2], 0.2 * logits[1.0])
    peak = {gain: spatial_softmax(value, 0.1).amax(dim=(-2, -1)) for gain, value in logits.items()}
    assert (peak[0.2] < peak[1.0]).all()
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="detector.head_init_gain"):
            HourglassDetector(3, channels=8, depth=2, stem_channels=8, head_init_gain=bad)


def test_hourglass_maps_are_a_quarter_of_the_input_and_odd_sizes_are_refused():
    detector = HourglassDetector(3, channels=8, depth=2, stem_channels=8).eval()
    assert detector.size_multiple == 16
    with torch.no_grad():
        assert detector(torch.rand(1, 3, 32, 48)).shape == (1, 3, 8, 12)
        with pytest.raises(ValueError, match=r"multiples of 16"):
            detector(torch.rand(1, 3, 40, 48))
