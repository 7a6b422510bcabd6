"""Named preprocessing protocols: which box of a source image becomes the network input.

Every protocol chooses a box ``(x0, y0, x1, y1)`` in continuous pixel coordinates of the
source image (see :mod:`lmbench.data`) and resamples it to ``size x size``; the points are
mapped with exactly the same affine map, ``x' = (x - x0) * size / (x1 - x0)`` (and so for y).
Parts of a box outside the image are black.

Protocols (written ``name`` or ``name:key=value,...``, e.g. ``gt_box:margin=0.7``):

- ``resize``: the whole image, resized to a square (stretched if not square). The default
  for already-cropped faces (MTFL's 80x80 copies, AFLW release-2 crops, pre-cropped 300-W).
- ``center_crop:fraction=F``: the central square of side ``F * min(W, H)``. For aligned
  CelebA, ``fraction=0.8`` is Jakab et al.'s pipeline (centre square 178 px, resized to 160,
  centre 128: 128/160 = 0.8 of the square).
- ``gt_box:margin=M``: a square around the ground-truth points: side ``max(w, h) * (1 + M)``
  of their bounding box, centred on it (Sanchez / Li, margin 0.7). It LEAKS the test
  images' own annotations into the input, so it is never a default and is flagged
  ``leaks_test_annotations`` in every record of the protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]

RESAMPLE = Image.Resampling.BICUBIC


@dataclass(frozen=True)
class ProtocolKind:
    description: str
    defaults: dict
    box: Callable[..., Box]
    leaks_test_annotations: bool = False
    needs_points: bool = False


def _resize_box(width: int, height: int, points, **_) -> Box:
    return (0.0, 0.0, float(width), float(height))


def _center_box(width: int, height: int, points, *, fraction: float) -> Box:
    side = fraction * min(width, height)
    cx, cy = width / 2.0, height / 2.0
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def _gt_box(width: int, height: int, points, *, margin: float) -> Box:
    if points is None or len(points) == 0:
        raise ValueError("protocol gt_box needs ground-truth points for every image")
    low, high = points.min(0), points.max(0)
    side = float((high - low).max()) * (1.0 + margin)
    if side <= 0:
        raise ValueError("protocol gt_box: the points span no area")
    cx, cy = (low + high) / 2.0
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


KINDS: dict[str, ProtocolKind] = {
    "resize": ProtocolKind("the whole image resized to a square", {}, _resize_box),
    "center_crop": ProtocolKind("the central square of side fraction * min(W, H), resized",
                                {"fraction": 1.0}, _center_box),
    "gt_box": ProtocolKind(
        "square around the ground-truth points, side (1 + margin) x their extent (Sanchez/Li); "
        "LEAKS test annotations into the input crop",
        {"margin": 0.7}, _gt_box, leaks_test_annotations=True, needs_points=True,
    ),
}


@dataclass(frozen=True)
class Protocol:
    name: str
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in KINDS:
            raise ValueError(f"unknown preprocessing protocol {self.name!r}; valid: {', '.join(KINDS)}")
        kind = KINDS[self.name]
        unknown = set(self.params) - set(kind.defaults)
        if unknown:
            valid = ", ".join(kind.defaults) or "none"
            raise ValueError(f"protocol {self.name!r}: unknown parameter(s) {', '.join(sorted(unknown))}; valid: {valid}")
        for key, value in self.params.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"protocol {self.name!r}: {key} must be a positive number, got {value!r}")

    @property
    def kind(self) -> ProtocolKind:
        return KINDS[self.name]

    @property
    def leaks_test_annotations(self) -> bool:
        return self.kind.leaks_test_annotations

    @property
    def needs_points(self) -> bool:
        return self.kind.needs_points

    def resolved(self) -> dict:
        return {**self.kind.defaults, **self.params}

    def box(self, width: int, height: int, points: np.ndarray | None) -> Box:
        return self.kind.box(width, height, points, **self.resolved())

    def record(self) -> dict:
        """What config.json keeps of the protocol."""
        return {
            "name": self.name,
            "params": self.resolved(),
            "description": self.kind.description,
            "leaks_test_annotations": self.leaks_test_annotations,
        }

    def __str__(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.resolved().items())
        return f"{self.name}:{params}" if params else self.name


def parse_protocol(spec: "str | dict | Protocol") -> Protocol:
    """``'center_crop:fraction=0.8'``, ``{'name': ..., 'params': {...}}`` or a Protocol."""
    if isinstance(spec, Protocol):
        return spec
    if isinstance(spec, dict):
        return Protocol(spec.get("name", ""), dict(spec.get("params", {})))
    name, _, rest = str(spec).strip().partition(":")
    params = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"protocol {spec!r}: expected key=value, got {item!r}")
        try:
            params[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"protocol {spec!r}: {key.strip()} must be a number, got {value!r}") from None
    return Protocol(name.strip(), params)


def crop_resize(image: Image.Image, box: Box, size: int) -> np.ndarray:
    """Resample ``box`` of ``image`` to uint8 [size, size, 3] (antialiased, black outside)."""
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"empty crop box {box}")
    width, height = image.size
    inside = x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height
    if not inside:
        # Pad by cropping an integer box (PIL fills outside with black), then shift the box.
        ix0, iy0 = math.floor(x0), math.floor(y0)
        image = image.crop((ix0, iy0, math.ceil(x1), math.ceil(y1)))
        box = (x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
    out = image.resize((size, size), RESAMPLE, box=box)
    return np.asarray(out, dtype=np.uint8)


def map_points(points: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The same map as :func:`crop_resize` applied to (x, y) continuous pixel points."""
    x0, y0, x1, y1 = box
    scale = np.array([size / (x1 - x0), size / (y1 - y0)])
    return ((np.asarray(points, np.float64) - [x0, y0]) * scale).astype(np.float32)


def box_to_source(box: Box, size: int) -> np.ndarray:
    """[2,3] affine taking output pixels of :func:`crop_resize` back to source-image pixels."""
    x0, y0, x1, y1 = box
    return np.array([[(x1 - x0) / size, 0.0, x0], [0.0, (y1 - y0) / size, y0]])


def apply(
    protocol: Protocol,
    image: Image.Image,
    points: np.ndarray | None,
    size: int,
    box_points: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, Box]:
    """Crop and resize one RGB image; returns uint8 [size,size,3], the mapped points and the box."""
    reference = points if points is None or box_points is None else box_points(points)
    box = protocol.box(image.size[0], image.size[1], reference)
    mapped = None if points is None else map_points(points, box, size)
    return crop_resize(image, box, size), mapped, box
