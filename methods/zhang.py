"""Zhang, Guo, Jin, Luo, He, Lee, CVPR 2018: landmarks as an autoencoder's structural code.

The detector (the shared hourglass, K+1 score maps at 1/4 resolution, the last one
background) gives per-pixel softmax probabilities over the K+1 channels; each landmark
channel normalised over the map is a distribution whose mean is the landmark (its
covariance feeds the concentration term). Per step, with x the batch and x' = W(x) under
a random TPS + similarity (:func:`lmbench.warps.random_zhang_warp`, from the step
generator), one detector call on [x; x'] gives the landmarks u, u' and the terms

- ``concentration``: 100 * mean_b sum_k 2 pi e sigma_k^2 (sigma_k: mean axis std, [0, 1] units);
- ``separation``: 20 * mean_b sum_{k != k'} exp(-|u_k - u_k'|^2 / (2 * 0.08^2)) ([0, 1] units);
- ``equivariance``: 1e4 * mean_b sum_k |g^{-1}(u'_k) - u_k|^2 in [-1, 1] units (the
  original's spatial-transformer units: its code compares the points in [-1, 1]);
- ``reconstruction``: 0.1 (x10 from step 100k, x100 from 200k) * mean_b sum_pixels
  0.5 (x - D(u, f))^2, counted at the original's 80 x 80 pixels, where the decoder D
  sees Gaussian maps rendered at u (plus a background channel) and, with
  ``landmark_features``, per-landmark features pooled under each map and painted back.

Concentration and separation apply to the landmarks of both x and x' (the original's
doubled batch); the reconstruction is of x only. Formulas: :mod:`lmbench.nn.zhang_losses`.
Every option is in ``method_options`` (recorded in config.json); the CLI applies
``CONFIG_DEFAULTS`` (Adam betas (0.9, 0.999), weight decay 1e-6, no perceptual loss) before
the user's own settings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmbench.adapt import initialise_detector
from lmbench.config import RunConfig
from lmbench.hookspecs import hookimpl
from lmbench.method import LandmarkMethod
from lmbench.methods.supervised import resolve_options
from lmbench.nn.bottleneck import render_gaussians
from lmbench.nn.hourglass import HourglassDetector
from lmbench.nn.perceptual import build_perceptual
from lmbench.nn.zhang_losses import (
    concentration_loss,
    equivariance_loss,
    landmark_maps,
    map_moments,
    piecewise_factor,
    reconstruction_loss,
    separation_loss,
)
from lmbench.registry import MethodSpec
from lmbench.warps import PADDING_MODES, random_zhang_warp

OPTIONS = {
    # loss weights (Zhang et al.'s values; units in lmbench.nn.zhang_losses)
    "concentration_weight": 100.0,
    "separation_weight": 20.0,
    "separation_bandwidth": 0.08,  # [0, 1] image units (K=10 in the original)
    "equivariance_weight": 1e4,  # per [-1, 1] unit squared
    "reconstruction_weight": 0.1,
    "reconstruction_milestones": [100000, 200000],  # steps where the factor changes
    "reconstruction_factors": [1.0, 10.0, 100.0],
    "reconstruction_pixels": 6400,  # count the pixel sum as an 80 x 80 image; 0: the real size
    # detector maps: softmax over the K+1 channels of logits / temperature (the original: 1)
    "temperature": 0.1,
    # decoder
    "landmark_features": True,  # pool per-landmark features under each map, paint them back
    "feature_dim": 8,  # the original's patch_feature_dim
    "decoder_sigma": 0.125,  # std of the rendered Gaussians, [0, 1] units (the original's 1/8)
    "decoder_levels": 3,  # rendered scales sigma * sqrt(2)^i (the original: 5)
    # equivariance warp (lmbench.warps.random_zhang_warp; normalised units)
    "warp_tps_sigma": 0.1,
    "warp_rotation_deg": 10.0,
    "warp_scale_log_std": math.log(1.25),
    "warp_translation": 0.3,
    "warp_padding": "border",
}

#: Settings the CLI applies before the user's (lmbench.registry.MethodSpec.config_defaults):
#: Zhang et al.'s optimiser (TF Adam defaults, weight decay 1e-6; their learning-rate steps
#: x0.1 at 100k and 200k) and a pixel-only reconstruction, as in the original.
CONFIG_DEFAULTS = {
    "optim.betas": [0.9, 0.999],
    "optim.weight_decay": 1e-6,
    "optim.lr_decay_every": 100000,
    "optim.lr_decay_factor": 0.1,
    "perceptual.backbone": "none",
    "steps": 1200,
}


def _check_options(o: dict) -> None:
    def bad(key, why):
        return ValueError(f"method 'zhang': method_options.{key} {why}, got {o[key]!r}")

    for key in ("concentration_weight", "separation_weight", "equivariance_weight", "reconstruction_weight"):
        if o[key] < 0:
            raise bad(key, "must be >= 0")
    for key in ("separation_bandwidth", "decoder_sigma", "temperature"):
        if o[key] <= 0:
            raise bad(key, "must be > 0")
    for key in ("feature_dim", "decoder_levels"):
        if o[key] < 1:
            raise bad(key, "must be >= 1")
    if o["reconstruction_pixels"] < 0:
        raise bad("reconstruction_pixels", "must be >= 0")
    if o["warp_padding"] not in PADDING_MODES:
        raise bad("warp_padding", f"must be one of {PADDING_MODES}")
    if len(o["reconstruction_factors"]) != len(o["reconstruction_milestones"]) + 1:
        raise bad("reconstruction_factors", "needs one more entry than reconstruction_milestones")


def decoder_maps(points: torch.Tensor, size: tuple[int, int], sigma: float, levels: int) -> list[torch.Tensor]:
    """Zhang et al.'s decoder input maps: per level, K+1 channels summing to 1 at every pixel.

    Level i renders each landmark as a Gaussian of std ``sigma * sqrt(2)^i`` ([0, 1] units)
    normalised over the map, adds a constant background density 1/(h w), and divides by the
    sum over the K+1 channels.
    """
    h, w = size
    out = []
    for level in range(levels):
        std_pixels = sigma * math.sqrt(2.0) ** level * math.sqrt(h * w)
        g = render_gaussians(points, size, std_pixels)
        g = g / g.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        background = torch.full_like(g[:, :1], 1.0 / (h * w))
        maps = torch.cat([g, background], dim=1)
        out.append(maps / maps.sum(dim=1, keepdim=True))
    return out


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


class LandmarkFeatures(nn.Module):
    """Per-landmark appearance codes: image features pooled under each of the K+1 maps.

    A small conv net gives features at 1/4 resolution; each code is the map-weighted mean
    of the features under one channel of the detector's K+1 probabilities, then a separate
    linear layer per channel (the original's ``group_connected``) maps it to ``dim`` values.
    """

    def __init__(self, channels: int, num_maps: int, dim: int):
        super().__init__()
        self.trunk = nn.Sequential(
            conv_bn_relu(3, channels // 2, 2), conv_bn_relu(channels // 2, channels, 2), conv_bn_relu(channels, channels)
        )
        self.weight = nn.Parameter(torch.randn(num_maps, channels, dim) / math.sqrt(channels))
        self.bias = nn.Parameter(torch.zeros(num_maps, dim))

    def forward(self, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        features = self.trunk(images)
        if features.shape[-2:] != probs.shape[-2:]:
            features = F.interpolate(features, size=probs.shape[-2:], mode="bilinear", align_corners=False)
        weights = probs / probs.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        pooled = torch.einsum("bkhw,bchw->bkc", weights, features.float())
        return torch.einsum("bkc,kcd->bkd", pooled, self.weight) + self.bias  # [B,K+1,dim]


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels), nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(channels))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class LandmarkDecoder(nn.Module):
    """Maps at 1/4 resolution (+ painted features) -> residual blocks -> two x2 upsamplings -> RGB in [0, 1]."""

    def __init__(self, in_channels: int, channels: int, blocks: int):
        super().__init__()
        half, quarter = max(channels // 2, 8), max(channels // 4, 8)
        self.body = nn.Sequential(conv_bn_relu(in_channels, channels), *[ResBlock(channels) for _ in range(blocks)])
        self.up1 = conv_bn_relu(channels, half)
        self.up2 = conv_bn_relu(half, quarter)
        self.out = nn.Conv2d(quarter, 3, 3, 1, 1)

    def forward(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.body(maps)
        x = self.up1(F.interpolate(x, scale_factor=2, mode="nearest"))
        x = self.up2(F.interpolate(x, scale_factor=2, mode="nearest"))
        if x.shape[-2:] != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(x))


class Zhang(LandmarkMethod):
    slices_randomness = True  # its only randomness is the warp, drawn for the global batch

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.options = o = resolve_options(config, OPTIONS, "zhang")
        _check_options(o)
        det, gen, per = config.detector, config.generator, config.perceptual
        self.detector = initialise_detector(
            HourglassDetector.from_config(config.K + 1, det), det
        )
        width = 4 * gen.conv_dim
        feature_dim = o["feature_dim"] if o["landmark_features"] else 0
        if feature_dim:
            self.features = LandmarkFeatures(width, config.K + 1, feature_dim)
        self.decoder = LandmarkDecoder((config.K + 1) * o["decoder_levels"] + feature_dim, width, gen.res_blocks)
        # Optimisation steps taken in training mode: drives the reconstruction schedule and
        # is checkpointed with the model, so a resumed run continues the schedule exactly.
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long))
        perceptual = None
        if per.backbone != "none":
            perceptual = build_perceptual(per.backbone, per.weights, layers=per.layers,
                                          imagenet_normalize=per.imagenet_normalize)
        object.__setattr__(self, "perceptual", perceptual)  # frozen: not a network, not checkpointed

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if self.perceptual is not None:
            self.perceptual._apply(fn, *args, **kwargs)
        return self

    # -- landmarks -------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Landmarks [B,K,2] (normalised), their covariances [B,K,2,2] and the K+1 channel probabilities."""
        maps, probs = landmark_maps(self.detector(images).float() / self.options["temperature"])
        points, cov = map_moments(maps)
        return points, cov, probs

    def detect(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)[0]

    # -- training --------------------------------------------------------------------------
    def draw_warp(self, images: torch.Tensor, generator: torch.Generator):
        o = self.options
        warp = random_zhang_warp(
            self.random_batch(images), generator, device=images.device,
            tps_sigma=o["warp_tps_sigma"], rotation_std_deg=o["warp_rotation_deg"],
            scale_log_std=o["warp_scale_log_std"], translation=o["warp_translation"],
        )
        return self.local_rows(warp)  # under DDP: this process's rows of the global draw

    def reconstruct(self, images: torch.Tensor, points: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        o = self.options
        size = tuple(probs.shape[-2:])
        inputs = decoder_maps(points, size, o["decoder_sigma"], o["decoder_levels"])
        if o["landmark_features"]:
            codes = self.features(images, probs)  # [B,K+1,F]
            inputs.append(torch.einsum("bkhw,bkf->bfhw", inputs[0], codes))
        return self.decoder(torch.cat(inputs, dim=1), tuple(images.shape[-2:]))

    def losses(self, images: torch.Tensor, generator: torch.Generator, points=None) -> dict[str, torch.Tensor]:
        o, batch = self.options, images.shape[0]
        warp = self.draw_warp(images, generator)
        warped = warp.apply_to_images(images, o["warp_padding"])
        both, cov, probs = self.encode(torch.cat([images, warped]))
        u, u_warped = both[:batch], both[batch:]
        step = int(self.step_count)
        if self.training:
            self.step_count += 1
        schedule = piecewise_factor(step, o["reconstruction_milestones"], o["reconstruction_factors"])
        output = self.reconstruct(images, u, probs[:batch])
        self.show(("x", images), ("g(x)", warped), ("reconstruction of x", output))
        terms = {
            "concentration": o["concentration_weight"] * concentration_loss(cov),
            "separation": o["separation_weight"] * separation_loss(both, o["separation_bandwidth"]),
            "equivariance": o["equivariance_weight"] * equivariance_loss(u, warp.inverse_map_points(u_warped)),
            "reconstruction": o["reconstruction_weight"] * schedule
            * reconstruction_loss(output, images, o["reconstruction_pixels"] or None),
        }
        if self.perceptual is not None:
            with torch.no_grad():
                target = self.perceptual.features(images)
            terms["perceptual"] = self.config.perceptual.weight * schedule * self.perceptual.loss_from_features(
                output, target)
        return terms


@hookimpl
def register_methods():
    return [
        MethodSpec(
            name="zhang",
            description="Zhang et al. 2018: concentration, separation, TPS equivariance and landmark-conditioned reconstruction",
            builder=Zhang,
            config_defaults=CONFIG_DEFAULTS,
        )
    ]
