"""The data contract every dataset plugin fulfils.

Coordinates
-----------
Points are ``(x, y)`` in *continuous pixel coordinates*: the image spans ``[0, W] x [0, H]``,
the top-left corner of the top-left pixel is ``(0, 0)`` and pixel ``(row i, column j)`` has
its centre at ``(j + 0.5, i + 0.5)``. Networks work in *normalised coordinates*
``u = 2 x / W - 1`` (PyTorch's ``align_corners=False`` convention), converted by
:func:`to_normalized` and :func:`to_pixels`.

Splits
------
A dataset provides three disjoint splits:

- ``train``: images for unsupervised training (points optional, never used for training),
- ``reg_train``: annotated images on which the evaluator fits the regressor,
- ``test``: annotated images on which NME is measured.

Images are uint8 arrays ``[N, H, W, 3]`` (NHWC, as they are stored in memory or in a
memory-mapped cache); a batch is gathered by index and converted to float ``[B, 3, H, W]``
in ``[0, 1]`` on the training device, so that no per-sample Python work sits on the
critical path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

SPLITS = ("train", "reg_train", "test")


@dataclass(frozen=True)
class LandmarkSchema:
    """Names of the annotated points and which two normalise the error (the eyes)."""

    names: tuple[str, ...]
    eye_indices: tuple[int, int] = (0, 1)

    @property
    def num_points(self) -> int:
        return len(self.names)


MAFL_SCHEMA = LandmarkSchema(
    names=("left_eye", "right_eye", "nose", "left_mouth", "right_mouth"), eye_indices=(0, 1)
)


@dataclass
class ImageSplit:
    """One split held as arrays: ``images`` uint8 [N,H,W,3], ``points`` float32 [N,P,2] or None.

    ``to_original`` [N,2,3], where known, maps input pixels ``p`` to the pixels of the original
    image's annotation frame (``A @ p + t``): what protocols with ``coordinates="original"``
    measure in.
    """

    images: np.ndarray
    points: np.ndarray | None = None
    sources: Sequence[str] | None = None
    to_original: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [N,H,W,3], got {self.images.dtype} {self.images.shape}"
            )
        if self.points is not None:
            if self.points.ndim != 3 or self.points.shape[0] != self.images.shape[0]:
                raise ValueError(
                    f"points must be [N,P,2] matching {self.images.shape[0]} images, "
                    f"got {self.points.shape}"
                )
        if self.to_original is not None and self.to_original.shape != (self.images.shape[0], 2, 3):
            raise ValueError(f"to_original must be [N,2,3] for {self.images.shape[0]} images, "
                             f"got {self.to_original.shape}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def batch(self, index: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """Float images [B,3,H,W] in [0,1] on ``device`` for the given indices."""
        index = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
        array = torch.from_numpy(np.ascontiguousarray(self.images[index]))
        device = torch.device(device)
        if device.type == "cuda":
            array = array.pin_memory().to(device, non_blocking=True)
        return array.to(device).permute(0, 3, 1, 2).float().div_(255.0)


@dataclass
class DatasetSplits:
    """What a dataset builder returns."""

    name: str
    schema: LandmarkSchema
    train: ImageSplit
    reg_train: ImageSplit
    test: ImageSplit
    info: dict = field(default_factory=dict)

    def split(self, name: str) -> ImageSplit:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return getattr(self, name)


def to_normalized(points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel (x, y) -> normalised [-1, 1] for an image of ``size = (H, W)``."""
    h, w = size
    scale = points.new_tensor([2.0 / w, 2.0 / h])
    return points * scale - 1.0


def to_pixels(points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Normalised [-1, 1] (x, y) -> pixel coordinates for an image of ``size = (H, W)``."""
    h, w = size
    scale = points.new_tensor([w / 2.0, h / 2.0])
    return (points + 1.0) * scale
