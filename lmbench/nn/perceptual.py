"""Perceptual (feature-matching) loss on a frozen ImageNet VGG-16 or AlexNet trunk.

The trunk is built from plain Conv2d/ReLU/MaxPool2d in torchvision's ``features`` index
layout, so torchvision-layout state dicts (see ``lmbench.weights``) load directly and
torchvision itself is never needed.

Input normalisation: Sanchez & Tzimiropoulos feed [0, 1] images to VGG *without* the
ImageNet mean/std, and so does ``imagenet_normalize=False`` (the default, to reproduce
the original). ``imagenet_normalize=True`` applies the mean/std the weights were trained
with; it changes the relative scale of the layer terms, so record it with every result.

To avoid recomputing the target's features, a training step can call ``features(target)``
once under ``torch.no_grad()`` and pass them to ``loss_from_features`` for every
prediction compared with that target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmbench.weights import expected_shapes, resolve_weights

__all__ = ["LAYERS", "DEFAULT_LAYERS", "PerceptualLoss", "build_perceptual"]

# Name -> index in torchvision's ``features`` whose output is tapped.
LAYERS: dict[str, dict[str, int]] = {
    "vgg16": {
        "relu1_1": 1, "relu1_2": 3,
        "relu2_1": 6, "relu2_2": 8,
        "relu3_1": 11, "relu3_2": 13, "relu3_3": 15,
        "relu4_1": 18, "relu4_2": 20, "relu4_3": 22,
    },
    "alexnet": {"relu1": 1, "relu2": 4, "relu3": 7, "relu4": 9, "relu5": 11},
}
DEFAULT_LAYERS = {
    "vgg16": ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
    "alexnet": ("relu1", "relu2", "relu3", "relu4", "relu5"),
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg16_features(depth: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    cin = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return layers[:depth]


def _alexnet_features(depth: int) -> list[nn.Module]:
    layers = [
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
    ]
    return layers[:depth]


_BUILDERS = {"vgg16": _vgg16_features, "alexnet": _alexnet_features}


class PerceptualLoss(nn.Module):
    """Sum over the chosen layers of the MSE between features of prediction and target.

    ``weights``: a torchvision-layout state dict (``features.*``); when None it is found
    with ``lmbench.weights.resolve_weights`` (which may download). ``self.trunk[i]`` is
    torchvision's ``features[i]`` (not called ``features``: that is the method), built only
    up to the deepest requested layer; its parameters are frozen and the module always
    stays in eval mode. Images are NCHW RGB in [0, 1]; channels_last and autocast work.
    ``weights_source`` records where the weights came from.
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        layers: Sequence[str] | None = None,
        weights: dict[str, Tensor] | None = None,
        imagenet_normalize: bool = False,
    ) -> None:
        super().__init__()
        if backbone not in LAYERS:
            raise ValueError(f"unknown perceptual backbone {backbone!r}; expected one of {tuple(LAYERS)}")
        layers = tuple(DEFAULT_LAYERS[backbone] if layers is None else layers)
        unknown = [name for name in layers if name not in LAYERS[backbone]]
        if unknown or not layers:
            raise ValueError(f"unknown {backbone} layers {unknown}; choose from {list(LAYERS[backbone])} "
                             "(perceptual.layers=null: the backbone's default layers)")
        self.backbone = backbone
        self.layers = layers
        self.imagenet_normalize = imagenet_normalize
        self._taps = sorted({LAYERS[backbone][name] for name in layers})
        self._order = [self._taps.index(LAYERS[backbone][name]) for name in layers]
        self.trunk = nn.Sequential(*_BUILDERS[backbone](self._taps[-1] + 1))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        self.weights_source = "given state dict"
        if weights is None:
            weights, self.weights_source = resolve_weights(backbone)
        self._load(weights)
        self.requires_grad_(False)
        super().train(False)

    def _load(self, weights: dict[str, Tensor]) -> None:
        own = self.trunk.state_dict()
        shapes = expected_shapes(self.backbone)
        missing = [k for k in own if f"features.{k}" not in weights]
        if missing:
            raise ValueError(f"{self.backbone} weights lack features.{missing[0]} (and {len(missing) - 1} more)")
        for k in own:
            got = tuple(weights[f"features.{k}"].shape)
            if got != shapes[f"features.{k}"]:
                raise ValueError(f"features.{k} has shape {got}, expected {shapes[f'features.{k}']}")
        self.trunk.load_state_dict({k: weights[f"features.{k}"] for k in own})

    def train(self, mode: bool = True) -> "PerceptualLoss":
        """Always eval: the trunk is a fixed feature extractor."""
        return super().train(False)

    def features(self, images: Tensor) -> list[Tensor]:
        """Features of ``images`` at ``self.layers``, in that order."""
        x = images
        if self.imagenet_normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        taps = []
        for i, layer in enumerate(self.trunk):
            x = layer(x)
            if i in self._taps:
                taps.append(x)
        return [taps[j] for j in self._order]

    def loss_from_features(self, pred_images: Tensor, target_features: list[Tensor]) -> Tensor:
        """Sum over layers of the mean squared error, computed in float32 (autocast-safe).

        ``target_features`` are used as given: compute them with ``features`` under
        ``torch.no_grad()`` so no gradient reaches the target.
        """
        pred_features = self.features(pred_images)
        if len(pred_features) != len(target_features):
            raise ValueError(f"expected {len(pred_features)} target feature maps, got {len(target_features)}")
        return sum(F.mse_loss(p.float(), t.float()) for p, t in zip(pred_features, target_features))

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            target_features = self.features(target)
        return self.loss_from_features(pred, target_features)

    def extra_repr(self) -> str:
        return f"backbone={self.backbone}, layers={list(self.layers)}, imagenet_normalize={self.imagenet_normalize}"


def build_perceptual(
    name: str,
    weights_path: str | Path | None = None,
    *,
    layers: Sequence[str] | None = None,
    imagenet_normalize: bool = False,
    allow_download: bool = True,
) -> PerceptualLoss | None:
    """``name`` in {"vgg16", "alexnet", "none"}; None for "none". ``.weights_source`` on the
    returned module says where the weights came from (for the run config)."""
    if name == "none":
        return None
    if name not in LAYERS:
        raise ValueError(f"unknown perceptual loss {name!r}; expected one of {[*LAYERS, 'none']}")
    weights, source = resolve_weights(name, weights_path, allow_download=allow_download)
    loss = PerceptualLoss(name, layers=layers, weights=weights, imagenet_normalize=imagenet_normalize)
    loss.weights_source = source
    return loss
