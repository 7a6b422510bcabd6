"""A small patch discriminator on [image, heatmaps] and the adversarial loss terms.

Used by the semi-supervised option of the supervised references (Robinson et al., ICCV
2019): the discriminator tells heatmaps rendered from ground-truth points from heatmaps the
detector predicts on unlabelled images, each concatenated with its image.

The two players are trained with *one* backward pass and one optimizer step (simultaneous
updates, no gradient reversal):

- :func:`discriminator_loss` sees the predicted maps *detached*, so its gradient reaches
  only the discriminator;
- :func:`generator_loss` evaluates the discriminator through :func:`call_frozen` (its
  parameters detached), so its gradient reaches only the detector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class PatchDiscriminator(nn.Module):
    """Strided 4x4 convolutions with LeakyReLU (no normalisation) -> one logit per patch.

    ``in_channels`` = 3 image channels + K heatmaps. With ``downsamplings = 2`` a 16 x 16
    input gives 4 x 4 patch logits (receptive field 22 px).
    """

    def __init__(self, in_channels: int, channels: int = 32, downsamplings: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(downsamplings):
            cout = channels * 2**i
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        """Patch logits [B,1,h',w'] for images [B,3,H,W] (resized to the maps) and maps [B,K,h,w]."""
        size = heatmaps.shape[-2:]
        if images.shape[-2:] != size:
            images = F.interpolate(images, size=size, mode="area")
        return self.net(torch.cat([images.to(heatmaps.dtype), heatmaps], dim=1))


def call_frozen(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """``module(*inputs)`` with its parameters and buffers detached: gradients reach the inputs only."""
    state = {name: tensor.detach() for name, tensor in module.state_dict(keep_vars=True).items()}
    return functional_call(module, state, inputs)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy: real -> 1, fake -> 0 (averaged over patches)."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: -log D(fake)."""
    return F.softplus(-fake_logits.float()).mean()


def peak_normalized(maps: torch.Tensor) -> torch.Tensor:
    """Maps [B,K,h,w] divided by each map's maximum, so real and predicted maps share a range."""
    return maps / maps.flatten(2).amax(-1).clamp_min(1e-12)[..., None, None]
