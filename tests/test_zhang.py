"""The zhang method: its loss terms on hand-computed inputs, the warp direction, a short run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from conftest import SHARED
from lmbench.config import RunConfig
from lmbench.methods.zhang import OPTIONS, Zhang, decoder_maps
from lmbench.nn.zhang_losses import (
    TWO_PI_E,
    concentration_loss,
    equivariance_loss,
    landmark_maps,
    map_moments,
    piecewise_factor,
    reconstruction_loss,
    separation_loss,
)
from lmbench.warps import identity_warp, similarity_warp


def tiny_config(**changes) -> RunConfig:
    config = RunConfig(method="zhang", K=3, image_size=32, batch_size=4, steps=2, checkpoint_every=100, log_every=1)
    config.detector.channels, config.detector.depth, config.detector.stem_channels = 16, 1, 8
    config.generator.conv_dim, config.generator.res_blocks = 4, 1
    config.perceptual.backbone = "none"
    config.protocol.floors = False
    for key, value in changes.items():
        setattr(config, key, value)
    return config


# -- maps and moments ----------------------------------------------------------------------
def test_landmark_is_the_mean_of_the_channel_softmax_map_normalised_over_space():
    # K = 1 on a 2 x 2 map: landmark logits log(3) at (row 0, col 1), 0 elsewhere; background 0.
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0, 0, 1] = math.log(3.0)
    maps, probs = landmark_maps(logits)
    # channel softmax: 3/4 at (0, 1), 1/2 elsewhere; over space: (2/9, 1/3; 2/9, 2/9).
    assert torch.allclose(probs[0, 0], torch.tensor([[0.5, 0.75], [0.5, 0.5]]))
    assert torch.allclose(maps[0, 0], torch.tensor([[2 / 9, 1 / 3], [2 / 9, 2 / 9]]))
    mean, cov = map_moments(maps)
    # pixel centres at -0.5 and 0.5: x = -0.5 * 4/9 + 0.5 * 5/9, y = -0.5 * 5/9 + 0.5 * 4/9.
    assert torch.allclose(mean[0, 0], torch.tensor([1 / 18, -1 / 18]), atol=1e-6)
    var_x = 4 / 9 * (-0.5 - 1 / 18) ** 2 + 5 / 9 * (0.5 - 1 / 18) ** 2
    assert cov[0, 0, 0, 0].item() == pytest.approx(var_x, abs=1e-6)
    assert cov[0, 0, 0, 1].item() == pytest.approx(cov[0, 0, 1, 0].item())


# -- concentration -------------------------------------------------------------------------
def test_concentration_of_a_delta_map_is_zero_and_of_a_two_point_map_is_hand_computed():
    delta = torch.zeros(1, 1, 4, 4)
    delta[0, 0, 1, 2] = 1.0
    _, cov = map_moments(delta)
    assert concentration_loss(cov).item() == pytest.approx(0.0, abs=1e-8)

    two = torch.zeros(1, 1, 2, 2)
    two[0, 0, 0, 0] = two[0, 0, 0, 1] = 0.5  # x at -0.5 and 0.5: std_x 0.5, std_y 0
    _, cov = map_moments(two)
    sigma = (0.5 + 0.0) / 2 * 0.5  # mean axis std, normalised -> [0, 1] units
    assert concentration_loss(cov).item() == pytest.approx(TWO_PI_E * sigma**2, rel=1e-4)


def test_concentration_sums_landmarks_and_averages_the_batch():
    cov = torch.zeros(2, 3, 2, 2)
    cov[..., 0, 0] = cov[..., 1, 1] = 0.04  # std 0.2 normalised = 0.1 in [0, 1] units
    assert concentration_loss(cov).item() == pytest.approx(3 * TWO_PI_E * 0.01, rel=1e-5)


# -- separation ----------------------------------------------------------------------------
def test_separation_of_two_points_at_a_known_distance():
    points = torch.tensor([[[-0.1, 0.0], [0.1, 0.0]]])  # 0.2 normalised = 0.1 in [0, 1] units
    expected = 2 * math.exp(-(0.1**2) / (2 * 0.08**2))  # ordered pairs: each counted twice
    assert separation_loss(points, 0.08).item() == pytest.approx(expected, rel=1e-5)


def test_separation_falls_as_points_spread():
    values = [separation_loss(torch.tensor([[[-d, 0.0], [d, 0.0], [0.0, d]]]), 0.08).item()
              for d in (0.0, 0.05, 0.1, 0.2, 0.4)]
    assert values[0] == pytest.approx(6.0)
    assert all(a > b for a, b in zip(values, values[1:]))


# -- equivariance --------------------------------------------------------------------------
def test_equivariance_is_zero_for_the_identity_and_known_for_a_translation():
    points = torch.tensor([[[0.1, 0.2], [-0.3, 0.4], [0.5, -0.6]]])
    assert equivariance_loss(points, identity_warp(1).inverse_map_points(points)).item() == 0.0
    shift = torch.tensor([[0.1, -0.2]])
    warp = similarity_warp(torch.zeros(1), torch.ones(1), shift)
    # landmarks that did NOT move with the image map back to u - t: loss K |t|^2.
    loss = equivariance_loss(points, warp.inverse_map_points(points))
    assert loss.item() == pytest.approx(3 * 0.05, rel=1e-5)
    # landmarks that moved with it map back exactly.
    assert equivariance_loss(points, warp.inverse_map_points(warp.map_points(points))).item() < 1e-12


class BlobDetector(nn.Module):
    """K+1 maps: every landmark channel is beta * the brightness at 1/4 size, background beta * (0.5 - it)."""

    def __init__(self, K: int, beta: float = 40.0):
        super().__init__()
        self.K, self.beta = K, beta
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images):
        gray = nn.functional.avg_pool2d(images.mean(1, keepdim=True), 4) * self.beta * self.scale
        return torch.cat([gray.expand(-1, self.K, -1, -1), 0.5 * self.beta - gray], dim=1)


def test_the_method_compares_landmarks_in_the_right_direction():
    config = tiny_config(image_size=64)
    method = Zhang(config)
    method.detector = BlobDetector(config.K)
    images = torch.zeros(2, 3, 64, 64)
    images[:, :, 12:20, 36:44] = 1.0  # a square centred at pixel (40, 16): normalised (0.25, -0.5)
    angle, scale, shift = torch.tensor([0.3, -0.2]), torch.tensor([1.1, 0.9]), torch.tensor([[0.2, 0.3], [-0.1, 0.2]])
    warp = similarity_warp(angle, scale, shift)
    method.draw_warp = lambda images, generator: warp
    method.options = {**method.options, "equivariance_weight": 1.0}
    terms = method.losses(images, torch.Generator().manual_seed(0))
    u = method.detect(images)
    assert torch.allclose(u, torch.tensor([0.25, -0.5]).expand_as(u), atol=0.03)
    # The blob moves by ~0.3-0.5 normalised units; a right-direction comparison leaves little.
    assert terms["equivariance"].item() < 3 * 0.03**2 * config.K
    wrong = equivariance_loss(u, warp.map_points(method.detect(warp.apply_to_images(images))))
    assert wrong.item() > 100 * terms["equivariance"].item()


def test_gradients_reach_the_detector_through_the_equivariance_term():
    torch.manual_seed(0)
    method = Zhang(tiny_config())
    terms = method.losses(torch.rand(4, 3, 32, 32), torch.Generator().manual_seed(1))
    terms["equivariance"].backward()
    grads = [p.grad for p in method.detector.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum().item() for g in grads) > 0
    assert all(p.grad is None for p in method.decoder.parameters())


# -- reconstruction ------------------------------------------------------------------------
def test_reconstruction_is_half_the_squared_error_summed_per_image():
    output, target = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    assert reconstruction_loss(output, target).item() == pytest.approx(0.5 * 0.25 * 48)
    # counted as 80 x 80 images: 0.5 * MSE * 3 * 6400
    assert reconstruction_loss(output, target, 6400).item() == pytest.approx(0.5 * 0.25 * 3 * 6400)


def test_decoder_maps_are_distributions_over_channels_peaking_at_the_points():
    points = torch.tensor([[[0.5, -0.5], [-0.25, 0.25]]])
    for maps in decoder_maps(points, (16, 16), 0.125, 3):
        assert maps.shape == (1, 3, 16, 16)
        assert torch.allclose(maps.sum(1), torch.ones(1, 16, 16))
    first = decoder_maps(points, (16, 16), 0.125, 1)[0]
    assert divmod(first[0, 0].argmax().item(), 16) in {(3, 11), (3, 12), (4, 11), (4, 12)}


def test_reconstruction_schedule():
    assert [piecewise_factor(s, [100, 200], [1, 10, 100]) for s in (0, 99, 100, 199, 200, 10**6)] == [1, 1, 10, 10, 100, 100]
    with pytest.raises(ValueError, match="one more factor"):
        piecewise_factor(0, [100], [1.0])
    method = Zhang(tiny_config())
    images, g = torch.rand(4, 3, 32, 32), torch.Generator().manual_seed(0)
    method.eval()
    method.losses(images, g)
    assert int(method.step_count) == 0  # only training steps count
    method.train()
    method.losses(images, g)
    assert int(method.step_count) == 1 and "step_count" in method.state_dict()


# -- options and configuration -------------------------------------------------------------
def test_options_are_validated_and_recorded():
    config = tiny_config()
    config.method_options.update({"equivariance_weight": 5000, "landmark_features": False})
    method = Zhang(config)
    assert config.method_options["equivariance_weight"] == 5000.0
    assert set(config.method_options) == set(OPTIONS)
    assert not hasattr(method, "features")
    with pytest.raises(ValueError, match="unknown method_options nope"):
        Zhang(tiny_config(method_options={"nope": 1}))
    with pytest.raises(ValueError, match="separation_bandwidth"):
        Zhang(tiny_config(method_options={"separation_bandwidth": 0.0}))


def test_two_training_steps_through_the_runner(test_plugin, tmp_path):
    from lmbench.runner import run

    config = tiny_config(dataset="blobs")
    metrics = run(config, tmp_path / "run")
    assert metrics["steps"] == 2 and math.isfinite(metrics["nme"])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["method_options"]["concentration_weight"] == 100.0
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"concentration", "separation", "equivariance", "reconstruction"} <= set(log[-1])


def test_the_cli_applies_the_method_defaults_before_user_settings(test_plugin, tmp_path):
    from click.testing import CliRunner

    from lmbench.cli import cli

    common = ["run", "--method", "zhang", "--K", "3", "--dataset", "blobs", "--steps", "1", "--batch-size", "4",
              "--image-size", "32", "--set", "detector.channels=16", "--set", "detector.depth=1",
              "--set", "detector.stem_channels=8", "--set", "generator.conv_dim=4", "--set", "protocol.floors=false"]
    runner = CliRunner()
    result = runner.invoke(cli, [*common, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["optim"]["weight_decay"] == 1e-6 and saved["optim"]["betas"] == [0.9, 0.999]
    assert saved["perceptual"]["backbone"] == "none"
    result = runner.invoke(cli, [*common, "--set", "optim.weight_decay=0.001", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "config.json").read_text())["optim"]["weight_decay"] == 0.001


@pytest.mark.skipif(not (SHARED / "weights").is_dir(), reason=f"perceptual weights not present at {SHARED / 'weights'}")
def test_optional_perceptual_term_uses_the_schedule():
    config = tiny_config()
    config.perceptual.backbone, config.perceptual.weights = "alexnet", str(SHARED / "weights")
    config.perceptual.layers = None
    method = Zhang(config)
    assert "perceptual" not in method.state_dict() and all("perceptual" not in k for k in method.state_dict())
    terms = method.losses(torch.rand(2, 3, 32, 32), torch.Generator().manual_seed(0))
    assert terms["perceptual"].item() > 0
    terms["perceptual"].backward()
    assert any(p.grad is not None for p in method.decoder.parameters())


def test_detect_uses_the_temperature_on_the_logits():
    logits = torch.zeros(1, 4, 2, 2)
    logits[0, 0, 0, 1] = math.log(3.0) * 0.1  # after / 0.1: the 2 x 2 test's map (2 channels only)
    logits[0, 1:3] = -1e4  # channels 1, 2 take no probability

    class Fixed(nn.Module):
        def forward(self, images):
            return logits.expand(images.shape[0], -1, -1, -1)

    method = Zhang(tiny_config())
    assert method.options["temperature"] == 0.1
    method.detector = Fixed()
    points = method.detect(torch.zeros(2, 3, 8, 8))
    assert torch.allclose(points[:, 0], torch.tensor([1 / 18, -1 / 18]).expand(2, 2), atol=1e-6)
