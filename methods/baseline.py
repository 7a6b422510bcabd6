"""Sanchez & Tzimiropoulos 2019: image generation through a landmark bottleneck.

X = G(x', H(x)): the generator redraws the deformed image x' in the landmark structure
that the detector finds in x; the loss compares X with x (perceptual + pixel MSE).
"""

from __future__ import annotations

import torch

from lmbench.generative import GenerativeMethod, generative_defaults
from lmbench.hookspecs import hookimpl
from lmbench.registry import MethodSpec


class Baseline(GenerativeMethod):
    slices_randomness = True  # its only randomness is make_pair's warp (lmbench.distributed)

    def losses(self, images: torch.Tensor, generator: torch.Generator, points=None) -> dict[str, torch.Tensor]:
        x, x_prime, _ = self.make_pair(images, generator)
        _, heatmaps = self.encode(x)
        output = self.generator(x_prime, heatmaps)
        self.show(("x", x), ("x'", x_prime), ("G(x', H(x)) vs x", output))
        return self.reconstruction_terms(output, x, self.target_features(x))


@hookimpl
def register_methods():
    return [
        MethodSpec(
            name="baseline",
            description="Sanchez & Tzimiropoulos 2019: reconstruct x from x' through H(x)'s landmark heatmaps",
            builder=Baseline,
            config_defaults=generative_defaults("baseline"),
        )
    ]
