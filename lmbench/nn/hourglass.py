"""The hourglass landmark detector (FAN-style, as used by Sanchez & Tzimiropoulos 2019).

Stem: conv 7x7 stride 2 then a pool, so the output maps are at 1/4 of the input size.
Blocks are FAN's ``ConvBlock``: three pre-activated 3x3 convolutions of out/2, out/4 and
out/4 channels whose outputs are concatenated, plus a 1x1 projection shortcut when the
channel count changes. The 3x3 convolutions are the ones that the "incremental"
adaptation re-parametrises.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3x3(cin, cout // 2)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout // 2), conv3x3(cout // 2, cout // 4)
        self.bn3, self.conv3 = nn.BatchNorm2d(cout // 4), conv3x3(cout // 4, cout - cout // 2 - cout // 4)
        self.shortcut = (
            nn.Identity()
            if cin == cout
            else nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(True), nn.Conv2d(cin, cout, 1, bias=False))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv1(torch.relu(self.bn1(x)))
        b = self.conv2(torch.relu(self.bn2(a)))
        c = self.conv3(torch.relu(self.bn3(b)))
        return torch.cat([a, b, c], dim=1) + self.shortcut(x)


class Hourglass(nn.Module):
    """Recursive hourglass: skip branch + (pool, block, inner hourglass, block, upsample)."""

    def __init__(self, depth: int, channels: int):
        super().__init__()
        self.skip = ConvBlock(channels, channels)
        self.down = ConvBlock(channels, channels)
        self.inner = Hourglass(depth - 1, channels) if depth > 1 else ConvBlock(channels, channels)
        self.up = ConvBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.down(nn.functional.max_pool2d(x, 2))
        low = self.up(self.inner(low))
        return self.skip(x) + nn.functional.interpolate(low, scale_factor=2, mode="nearest")


class HourglassDetector(nn.Module):
    """RGB in [0, 1] (no mean/std, like the original) -> K score maps at 1/4 resolution."""

    def __init__(
        self, num_maps: int, channels: int = 256, depth: int = 4, stem_channels: int = 64, head_init_gain: float = 1.0
    ):
        super().__init__()
        if not (math.isfinite(head_init_gain) and head_init_gain > 0):
            raise ValueError(f"detector.head_init_gain must be a positive number, got {head_init_gain}")
        mid = max(channels // 2, stem_channels)
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(True),
            ConvBlock(stem_channels, mid),
            nn.MaxPool2d(2),
            ConvBlock(mid, mid),
            ConvBlock(mid, channels),
        )
        self.hourglass = Hourglass(depth, channels)
        self.neck = nn.Sequential(
            ConvBlock(channels, channels),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(True),
        )
        self.head = nn.Conv2d(channels, num_maps, 1)
        if head_init_gain != 1.0:
            # Scales the initial logits, so the untrained maps are flatter (gain < 1) without
            # changing the softmax temperature the trained maps are read at.
            with torch.no_grad():
                self.head.weight.mul_(head_init_gain)
                self.head.bias.mul_(head_init_gain)
        self.num_maps = num_maps
        self.depth = depth

    @classmethod
    def from_config(cls, num_maps: int, config) -> "HourglassDetector":
        """The detector a run's ``DetectorConfig`` describes (every method builds it this way)."""
        return cls(num_maps, config.channels, config.depth, config.stem_channels, config.head_init_gain)

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this: the stem quarters them, each hourglass level halves them."""
        return 4 * 2**self.depth

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if any(side % self.size_multiple for side in images.shape[-2:]):
            raise ValueError(
                f"input {tuple(images.shape[-2:])}: the hourglass detector (depth {self.depth}) needs image sides "
                f"that are multiples of {self.size_multiple}"
            )
        return self.head(self.neck(self.hourglass(self.stem(images))))
