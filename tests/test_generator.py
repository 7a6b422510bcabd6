"""The heatmap-conditioned generator: its normalised input, and old checkpoints."""

import torch
from torch import nn

from lmbench.config import RunConfig
from lmbench.nn.bottleneck import render_gaussians
from lmbench.nn.generator import HeatmapGenerator

K, C = 3, 4


def test_input_norm_brings_the_heatmaps_to_the_scale_of_the_features():
    """As in Sanchez's and Li et al.'s generator: BatchNorm over [features; heatmaps].

    A Gaussian map of sigma 2 at 16 x 16 has a standard deviation of about 0.2; after the
    normalisation (training mode, default affine) each heatmap channel has mean 0 and
    standard deviation 1 over the batch.
    """
    torch.manual_seed(0)
    generator = HeatmapGenerator(K, conv_dim=C, res_blocks=1, input_norm=True).train()
    norm = generator.blocks[0]
    assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == 4 * C + K
    points = torch.rand(8, K, 2) * 1.6 - 0.8
    maps = render_gaussians(points, (16, 16), sigma=2.0)
    assert 0.1 < maps.std().item() < 0.3
    features = generator.encoder(torch.rand(8, 3, 64, 64))
    normalised = norm(torch.cat([features, maps], dim=1))[:, 4 * C:]
    mean = normalised.mean(dim=(0, 2, 3))
    std = normalised.var(dim=(0, 2, 3), unbiased=False).sqrt()
    assert torch.allclose(mean, torch.zeros(K), atol=1e-5)
    assert torch.allclose(std, torch.ones(K), atol=1e-3)


def test_without_input_norm_the_state_dict_is_the_earlier_layout():
    """Runs saved before the layer existed (config ``generator.input_norm`` false) still load."""
    old = HeatmapGenerator(K, conv_dim=C, res_blocks=2, input_norm=False)
    new = HeatmapGenerator(K, conv_dim=C, res_blocks=2)
    assert isinstance(old.blocks[0], nn.Module) and not isinstance(old.blocks[0], nn.BatchNorm2d)
    assert len(new.state_dict()) == len(old.state_dict()) + 5  # weight, bias, running mean/var, count
    HeatmapGenerator(K, conv_dim=C, res_blocks=2, input_norm=False).load_state_dict(old.state_dict())
    assert RunConfig().generator.input_norm is True
    out = new.eval()(torch.rand(2, 3, 64, 64), torch.rand(2, K, 16, 16))
    assert out.shape == (2, 3, 64, 64) and 0 <= out.min() and out.max() <= 1
