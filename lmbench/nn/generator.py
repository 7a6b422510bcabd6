"""StarGAN-style generator conditioned on landmark heatmaps (Sanchez & Tzimiropoulos 2019).

conv 7x7 (3 -> c), two stride-2 4x4 convs down to 4c channels at 1/4 resolution, the K
heatmaps concatenated and the concatenation batch-normalised (``input_norm``, as in the
originals' code: it lifts the Gaussian maps to the image features' scale), residual blocks
of (4c + K) channels, two stride-2 transposed convs up, conv 7x7 -> 3, tanh mapped to
[0, 1]. BatchNorm throughout, as in the original.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class HeatmapGenerator(nn.Module):
    """G(appearance image, heatmaps) -> image in [0, 1]; heatmaps are at 1/4 resolution."""

    def __init__(self, num_maps: int, conv_dim: int = 32, res_blocks: int = 6, input_norm: bool = True):
        super().__init__()
        c = conv_dim
        self.encoder = nn.Sequential(
            conv_bn_relu(3, c, 7, padding=3),
            conv_bn_relu(c, 2 * c, 4, stride=2, padding=1),
            conv_bn_relu(2 * c, 4 * c, 4, stride=2, padding=1),
        )
        width = 4 * c + num_maps
        norm = [nn.BatchNorm2d(width)] if input_norm else []
        self.blocks = nn.Sequential(*norm, *[ResidualBlock(width) for _ in range(res_blocks)])
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(width, 2 * c, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(True),
            nn.Conv2d(c, 3, 7, padding=3),
        )

    def forward(self, appearance: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        features = self.encoder(appearance)
        if heatmaps.shape[-2:] != features.shape[-2:]:
            raise ValueError(
                f"heatmaps {tuple(heatmaps.shape[-2:])} must match the generator's "
                f"1/4-resolution features {tuple(features.shape[-2:])}"
            )
        out = self.decoder(self.blocks(torch.cat([features, heatmaps.to(features.dtype)], dim=1)))
        return (torch.tanh(out) + 1) / 2
