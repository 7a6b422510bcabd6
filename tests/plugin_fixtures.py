"""Plugins defined by the test suite: a tiny dataset and a tiny method, registered like any third party's."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lmbench.data import MAFL_SCHEMA, DatasetSplits, ImageSplit
from lmbench.hookspecs import hookimpl
from lmbench.method import LandmarkMethod
from lmbench.nn.bottleneck import softargmax
from lmbench.registry import DatasetSpec, MethodSpec


def _blobs(n: int, size: int, seed: int) -> ImageSplit:
    """Images with two bright squares whose centres are the first two points."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size, 3), np.uint8)
    points = np.zeros((n, 5, 2), np.float32)
    for i in range(n):
        cx, cy = rng.uniform(size * 0.3, size * 0.7, 2)
        for j, dx in enumerate((-size * 0.15, size * 0.15)):
            x, y = int(cx + dx), int(cy)
            images[i, y - 1 : y + 2, x - 1 : x + 2] = 255
            points[i, j] = (x + 0.5, y + 0.5)
        points[i, 2:] = points[i, :1] + [[0.0, 4.0], [-2.0, 8.0], [2.0, 8.0]]
    return ImageSplit(images, points)


def build_blobs(root=None, image_size=32, seed=0, n=24, **_):
    return DatasetSplits("blobs", MAFL_SCHEMA, _blobs(n, image_size, seed), _blobs(n, image_size, seed + 1),
                         _blobs(n // 2, image_size, seed + 2), info={"n": n})


class TinyMethod(LandmarkMethod):
    """A one-layer detector trained to make its maps peaky: enough to exercise the trainer."""

    def __init__(self, config):
        super().__init__(config)
        self.detector = nn.Conv2d(3, config.K, 3, padding=1)

    def losses(self, images, generator, points=None):
        noise = torch.rand(images.shape[0], generator=generator).to(images.device)
        maps = self.detector(images)
        return {"peak": -maps.flatten(2).max(-1).values.mean() * 1e-3 + noise.mean() * 0}

    def detect(self, images):
        return softargmax(self.detector(images), 0.1)


class TestPlugin:
    @hookimpl
    def register_methods(self):
        return [MethodSpec("tiny", "a one-layer test method", TinyMethod)]

    @hookimpl
    def register_datasets(self):
        return [DatasetSpec("blobs", "bright squares (test fixture)", build_blobs, embedded=True)]


class ClashingPlugin:
    @hookimpl
    def register_methods(self):
        return [MethodSpec("baseline", "a second baseline", TinyMethod)]
