"""The embedded ``synthetic`` dataset: procedurally rendered cartoon faces with exact landmarks.

Every face is a pure function of ``(seed, index)``: identity (head shape, skin, hair, eyes,
brows, nose, mouth, glasses), pose (in-plane rotation, scale, translation, a mild yaw),
a cluttered background and the lighting are all drawn from ``np.random.default_rng([seed,
index])``, so images never depend on rendering order or batching.

Drawing happens on a canvas ``SUPERSAMPLE`` times larger than the output and is box-filtered
down (``Image.reduce``) for antialiasing. All geometry is computed analytically in *output*
continuous pixel coordinates (see :mod:`lmbench.data`) and multiplied by ``SUPERSAMPLE`` only
when handed to PIL: a supersampled coordinate ``p`` is the output coordinate ``p / SUPERSAMPLE``
(both frames put ``(0, 0)`` at the image corner, so no half-pixel shift is involved). PIL
truncates vertices to pixel indices and fills both boundary pixels, which makes shapes about one
supersampled pixel fatter but leaves their centres unbiased; a drawn feature is off by less than
half a supersampled pixel (1/8 output pixel), and pupil centroids measured on renders match the
eye points to about 0.02 output pixels on average.

Pose: in-plane roll, scale and translation, plus a yaw that turns the inner features on an
ellipsoidal head (``FaceFrame``): protruding points such as the nose tip shift most and the
far side is foreshortened, while the outline stays the head's silhouette.

The five annotated points follow MAFL: left eye centre (pupil), right eye centre, nose tip,
left mouth corner, right mouth corner, with left/right meaning *image* left/right. They are
transformed through exactly the same pose as the drawing.

Splits use disjoint index ranges (``SPLIT_OFFSETS``). Rendered splits are cached in process
and on disk under ``$LMBENCH_CACHE`` (default ``~/.cache/lmbench``) in ``synthetic/``, keyed
by ``RENDER_VERSION``, which must be bumped whenever the renderer's output changes.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lmbench.atomic import atomic_path
from lmbench.data import MAFL_SCHEMA, DatasetSplits, ImageSplit
from lmbench.hookspecs import hookimpl
from lmbench.registry import DatasetSpec

RENDER_VERSION = 1
SUPERSAMPLE = 4
NUM_POINTS = 5

# Face indices of the splits: [offset, offset + n), n at most SPLIT_STRIDE, so never shared.
SPLIT_STRIDE = 10**6
SPLIT_OFFSETS = {"train": 0, "reg_train": SPLIT_STRIDE, "test": 2 * SPLIT_STRIDE}
DEFAULT_SIZES = {"train": 6000, "reg_train": 1000, "test": 500}

# Pose ranges (output image fractions / radians).
MAX_ROLL = math.radians(30.0)
MAX_YAW = math.radians(25.0)
SCALE_RANGE = (0.8, 1.2)
MAX_SHIFT = 0.10
# Head half-height in output pixels at scale 1, as a fraction of the image size.
HEAD_FRACTION = 0.38
# Canonical point (head centre at the origin, y down, head half-height 1) put at the image centre.
ANCHOR_Y = 0.22

# Depths (canonical units) of features relative to the head surface, and stroke widths.
EYE_RECESS = 0.04
LIP_LIFT = 0.02
NOSE_STROKE = 0.02
LID_STROKE = 0.018
LIP_STROKE = 0.012

# Styles and how often they occur.
HAIR_BALD, HAIR_SHORT, HAIR_LONG, HAIR_CURLY = range(4)
HAIR_STYLE_WEIGHTS = (0.08, 0.4, 0.35, 0.17)
FRINGE_NONE, FRINGE_STRAIGHT, FRINGE_ZIGZAG, FRINGE_SWEPT = range(4)
FRINGE_WEIGHTS = (0.55, 0.15, 0.15, 0.15)
NOSE_BULB, NOSE_BRIDGE, NOSE_WEDGE = range(3)
GLASSES_PROBABILITY = 0.25
TINTED_GLASSES_PROBABILITY = 0.3
OPEN_MOUTH_PROBABILITY = 0.15
OUTLINE_PROBABILITY = 0.3

# Background and photometry.
TEXTURE_PROBABILITY = 0.6
CLUTTER_COUNT = (3, 11)  # number of background shapes, [low, high)
MAX_SHADING = 0.4  # brightness ramp slope, per head half-height, across the face
MAX_NOISE = 0.025  # standard deviation of pixel noise, in [0, 1] intensity units
_CHANNEL_OFFSETS = np.array([0, 256, 512], dtype=np.intp)

# Lines at least this many supersampled pixels wide get round joints (slower to draw).
ROUND_JOINT_WIDTH = 4

_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 33)[:-1]), np.sin(np.linspace(0, 2 * np.pi, 33)[:-1])], 1)

Colour = tuple[int, int, int]

SKIN_TONES = np.array(
    [(255, 226, 200), (242, 200, 160), (226, 176, 126), (198, 140, 92), (160, 104, 66), (112, 72, 48), (78, 52, 38)],
    dtype=np.float64,
)
HAIR_COLOURS = np.array(
    [(24, 20, 18), (56, 38, 26), (96, 64, 38), (140, 96, 56),
     (214, 180, 116), (168, 74, 34), (150, 150, 150), (226, 224, 216)],
    dtype=np.float64,
)
HAIR_WEIGHTS = np.array([0.25, 0.2, 0.15, 0.1, 0.1, 0.07, 0.07, 0.06])
IRIS_COLOURS = np.array(
    [(88, 54, 30), (52, 32, 20), (66, 112, 168), (76, 118, 72), (112, 120, 130), (128, 98, 50)], dtype=np.float64
)
LIP_COLOURS = np.array([(200, 100, 112), (176, 84, 84), (150, 72, 62), (196, 40, 60), (120, 60, 60)], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    half_width: float  # canonical units (head half-height is 1)
    depth: float  # ellipsoid semi-axis towards the camera
    taper: float  # narrowing of the lower half (jaw)
    squareness: float  # superellipse exponent, 2 = ellipse
    skin: Colour


@dataclass(frozen=True)
class Eyes:
    y: float
    spacing: float  # half inter-ocular distance
    width: float  # half-width of one eye
    upper: float  # upper lid height
    lower: float  # lower lid height
    tilt: float  # outer-corner lift as a fraction of the width
    iris: float  # iris radius
    pupil: float
    iris_colour: Colour
    brow_gap: float
    brow_length: float
    brow_thickness: float
    brow_arch: float
    brow_slant: float
    brow_colour: Colour


@dataclass(frozen=True)
class Nose:
    y: float  # tip height
    length: float  # protrusion of the tip, drives the yaw shift
    tip: float  # tip radius
    nostril: float  # half-spacing of the nostrils
    style: int  # NOSE_BULB, NOSE_BRIDGE or NOSE_WEDGE
    colour: Colour


@dataclass(frozen=True)
class Mouth:
    y: float
    half_width: float
    upper: float
    lower: float
    smile: float  # corner lift
    open: float  # gap between the lips, 0 closed
    colour: Colour


@dataclass(frozen=True)
class Hair:
    style: int  # HAIR_BALD, HAIR_SHORT, HAIR_LONG or HAIR_CURLY
    colour: Colour
    volume: float
    hairline: float
    side: float  # height where the cap meets the side of the head
    fringe: int  # FRINGE_NONE, FRINGE_STRAIGHT, FRINGE_ZIGZAG or FRINGE_SWEPT
    fringe_depth: float
    length: float  # bottom of long hair
    parting: float


@dataclass(frozen=True)
class Glasses:
    half_width: float
    half_height: float
    squareness: float
    rim: float
    colour: Colour
    tint: tuple[int, int, int, int]


@dataclass(frozen=True)
class Face:
    head: Head
    eyes: Eyes
    nose: Nose
    mouth: Mouth
    hair: Hair
    glasses: Glasses | None
    clothes: Colour
    outline: bool


@dataclass(frozen=True)
class Pose:
    roll: float  # in-plane rotation, radians
    yaw: float  # left-right turn, radians
    scale: float  # output pixels per canonical unit
    centre: tuple[float, float]  # output position of the anchor


class ScalarRng:
    """Scalar random draws served from pre-drawn blocks of one ``np.random.Generator``.

    A face needs about a hundred scalars; drawing them one ``Generator`` call at a time costs
    more than the rest of the parameter sampling. The sequence stays a pure function of the
    generator's seed. Large arrays are drawn from :attr:`generator` directly.
    """

    BLOCK = 64

    def __init__(self, generator: np.random.Generator):
        self.generator = generator
        self._pool: list[float] = []

    def random(self) -> float:
        if not self._pool:
            self._pool = self.generator.random(self.BLOCK).tolist()
        return self._pool.pop()

    def uniform(self, low: float = 0.0, high: float = 1.0, size: int | None = None):
        if size is not None:
            return np.array([self.uniform(low, high) for _ in range(size)])
        return low + (high - low) * self.random()

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: int | None = None):
        if size is not None:
            return np.array([self.normal(loc, scale) for _ in range(size)])
        radius = math.sqrt(-2.0 * math.log(1.0 - self.random()))  # Box-Muller
        return loc + scale * radius * math.cos(2.0 * math.pi * self.random())

    def integers(self, low: int, high: int) -> int:
        """An integer in ``[low, high)``."""
        return min(low + int(self.random() * (high - low)), high - 1)

    def choice(self, n: int, p=None) -> int:
        """An index in ``[0, n)``, uniform or with probabilities ``p``."""
        if p is None:
            return self.integers(0, n)
        u, total = self.random(), 0.0
        for index, weight in enumerate(p):
            total += weight
            if u < total:
                return index
        return n - 1


def _pick(rng: ScalarRng, palette: np.ndarray, jitter: float, weights=None) -> np.ndarray:
    colour = palette[rng.choice(len(palette), p=weights)]
    return np.clip(colour + rng.normal(0.0, jitter, 3), 0, 255)


def _blend(a, b, t: float) -> np.ndarray:
    return np.asarray(a, dtype=np.float64) * (1 - t) + np.asarray(b, dtype=np.float64) * t


def _rgb(colour) -> Colour:
    r, g, b = (min(255, max(0, int(round(float(v))))) for v in colour)
    return (r, g, b)


def _skin(rng: ScalarRng) -> np.ndarray:
    position = rng.uniform(0, len(SKIN_TONES) - 1)
    low = int(position)
    high = min(low + 1, len(SKIN_TONES) - 1)
    tone = _blend(SKIN_TONES[low], SKIN_TONES[high], position - low)
    return np.clip(tone + rng.normal(0, 6, 3), 0, 255)


def sample_head(rng: ScalarRng) -> Head:
    half_width = rng.uniform(0.70, 0.86)
    return Head(
        half_width=half_width,
        depth=half_width * rng.uniform(0.85, 1.0),
        taper=rng.uniform(0.0, 0.22),
        squareness=rng.uniform(2.0, 2.8),
        skin=_rgb(_skin(rng)),
    )


def sample_eyes(rng: ScalarRng, head: Head, hair_colour: np.ndarray) -> Eyes:
    spacing = head.half_width * rng.uniform(0.40, 0.48)
    width = min(rng.uniform(0.09, 0.13), spacing - 0.12)
    upper = width * rng.uniform(0.40, 0.70)
    lower = width * rng.uniform(0.30, 0.50)
    iris = min(width * rng.uniform(0.45, 0.62), upper * 1.3)
    brow_colour = _blend(hair_colour, (20, 16, 14), rng.uniform(0.2, 0.6))
    return Eyes(
        y=rng.uniform(-0.08, 0.06),
        spacing=spacing,
        width=width,
        upper=upper,
        lower=lower,
        tilt=rng.uniform(-0.15, 0.2),
        iris=iris,
        pupil=iris * rng.uniform(0.38, 0.55),
        iris_colour=_rgb(_pick(rng, IRIS_COLOURS, 10)),
        brow_gap=rng.uniform(0.05, 0.10),
        brow_length=width * rng.uniform(1.1, 1.5),
        brow_thickness=rng.uniform(0.018, 0.045),
        brow_arch=rng.uniform(0.0, 0.05),
        brow_slant=rng.uniform(-0.12, 0.15),
        brow_colour=_rgb(brow_colour),
    )


def sample_nose(rng: ScalarRng, eyes: Eyes, skin: Colour) -> Nose:
    return Nose(
        y=eyes.y + rng.uniform(0.30, 0.42),
        length=rng.uniform(0.16, 0.30),
        tip=rng.uniform(0.035, 0.06),
        nostril=rng.uniform(0.045, 0.07),
        style=rng.integers(0, 3),
        colour=_rgb(_blend(skin, (60, 30, 20), rng.uniform(0.3, 0.55))),
    )


def sample_mouth(rng: ScalarRng, eyes: Eyes, nose: Nose, skin: Colour) -> Mouth:
    lip = _pick(rng, LIP_COLOURS, 12)
    return Mouth(
        y=nose.y + rng.uniform(0.19, 0.28),
        half_width=eyes.spacing * rng.uniform(0.6, 0.95),
        upper=rng.uniform(0.02, 0.045),
        lower=rng.uniform(0.025, 0.06),
        smile=rng.uniform(-0.02, 0.07),
        open=rng.uniform(0.02, 0.06) if rng.random() < OPEN_MOUTH_PROBABILITY else 0.0,
        colour=_rgb(_blend(skin, lip, rng.uniform(0.5, 0.95))),
    )


def sample_hair(rng: ScalarRng, colour: np.ndarray) -> Hair:
    style = rng.choice(4, p=HAIR_STYLE_WEIGHTS)
    return Hair(
        style=style,
        colour=_rgb(colour),
        volume=rng.uniform(0.15, 0.3) if style == HAIR_CURLY else rng.uniform(0.04, 0.16),
        hairline=rng.uniform(-0.78, -0.5),
        side=rng.uniform(-0.15, 0.1),
        fringe=rng.choice(4, p=FRINGE_WEIGHTS),
        fringe_depth=rng.uniform(0.1, 0.3),
        length=rng.uniform(0.9, 1.9),
        parting=rng.uniform(-0.4, 0.4),
    )


def sample_glasses(rng: ScalarRng, eyes: Eyes) -> Glasses | None:
    if rng.random() >= GLASSES_PROBABILITY:
        return None
    half_width = min(eyes.width * rng.uniform(1.45, 1.9), eyes.spacing - 0.03)
    tinted = rng.random() < TINTED_GLASSES_PROBABILITY
    tint = _rgb(rng.uniform(0, 255, 3))
    return Glasses(
        half_width=half_width,
        half_height=half_width * rng.uniform(0.6, 0.95),
        squareness=rng.uniform(2.0, 5.0),
        rim=rng.uniform(0.012, 0.03),
        colour=_rgb(rng.uniform(0, 255, 3) * rng.uniform(0.1, 0.8)),
        tint=(*tint, int(rng.uniform(30, 90)) if tinted else 0),
    )


def sample_face(rng: ScalarRng) -> Face:
    """Draw one identity."""
    head = sample_head(rng)
    hair_colour = _pick(rng, HAIR_COLOURS, 8, HAIR_WEIGHTS)
    hair = sample_hair(rng, hair_colour)
    eyes = sample_eyes(rng, head, hair_colour)
    nose = sample_nose(rng, eyes, head.skin)
    mouth = sample_mouth(rng, eyes, nose, head.skin)
    glasses = sample_glasses(rng, eyes)
    return Face(
        head=head,
        eyes=eyes,
        nose=nose,
        mouth=mouth,
        hair=hair,
        glasses=glasses,
        clothes=_rgb(rng.uniform(0, 255, 3)),
        outline=rng.random() < OUTLINE_PROBABILITY,
    )


def sample_pose(rng: ScalarRng, size: int) -> Pose:
    """Draw roll, yaw, scale and translation for an image of ``size`` pixels."""
    shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2) * size
    return Pose(
        roll=rng.uniform(-MAX_ROLL, MAX_ROLL),
        yaw=rng.uniform(-MAX_YAW, MAX_YAW),
        scale=HEAD_FRACTION * size * rng.uniform(*SCALE_RANGE),
        centre=(size / 2 + shift[0], size / 2 + shift[1]),
    )


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


class FaceFrame:
    """Maps canonical face coordinates (head centre at 0, y down, half-height 1) to output pixels.

    Inner features lie on an ellipsoid (half-width ``a``, depth ``c``); yaw rotates them about
    the vertical axis, ``x' = x cos(yaw) + z sin(yaw)``, which shifts protruding points (the nose
    tip) most and foreshortens the far side. Outline shapes use the ellipsoid's silhouette.
    """

    def __init__(self, head: Head, pose: Pose):
        self.a = head.half_width
        self.c = head.depth
        self.cos_yaw, self.sin_yaw = math.cos(pose.yaw), math.sin(pose.yaw)
        self.silhouette = math.hypot(self.a * self.cos_yaw, self.c * self.sin_yaw) / self.a
        cos_r, sin_r = math.cos(pose.roll), math.sin(pose.roll)
        # Output = scale * R(roll) @ (x', y - ANCHOR_Y) + centre, kept as Python floats.
        self.m00, self.m01 = pose.scale * cos_r, -pose.scale * sin_r
        self.m10, self.m11 = pose.scale * sin_r, pose.scale * cos_r
        self.ox = pose.centre[0] - self.m01 * ANCHOR_Y
        self.oy = pose.centre[1] - self.m11 * ANCHOR_Y
        self.pixels_per_unit = pose.scale

    def depth(self, xy: np.ndarray) -> np.ndarray:
        """Height of the head ellipsoid above the face plane at canonical ``xy``."""
        inside = 1.0 - (xy[..., 0] / self.a) ** 2 - xy[..., 1] ** 2
        return self.c * np.sqrt(np.maximum(inside, 0.0))

    def on_surface(self, xy: np.ndarray, lift: float | np.ndarray = 0.0) -> np.ndarray:
        """Output pixels of points lying ``lift`` above the head surface."""
        xy = np.asarray(xy, dtype=np.float64)
        z = self.depth(xy) + lift
        return self._place(xy[..., 0] * self.cos_yaw + z * self.sin_yaw, xy[..., 1])

    def on_outline(self, xy: np.ndarray) -> np.ndarray:
        """Output pixels of points drawn relative to the silhouette (outline, hair, ears)."""
        xy = np.asarray(xy, dtype=np.float64)
        return self._place(xy[..., 0] * self.silhouette, xy[..., 1])

    def parts_on_surface(self, parts: list[np.ndarray], lifts: list[float]) -> list[np.ndarray]:
        """:meth:`on_surface` for several shapes at once (one projection, split again)."""
        lengths = [len(part) for part in parts]
        lift = np.repeat(np.asarray(lifts, dtype=np.float64), lengths)
        projected = self.on_surface(np.concatenate(parts), lift)
        return _split(projected, lengths)

    def _place(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Roll, scale and translate projected coordinates into output pixels."""
        return _xy(self.m00 * x + self.m01 * y + self.ox, self.m10 * x + self.m11 * y + self.oy)


def _xy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Stack coordinate arrays into points [..., 2] (a cheaper ``np.stack(..., -1)``)."""
    out = np.empty(np.shape(x) + (2,))
    out[..., 0] = x
    out[..., 1] = y
    return out


def _split(points: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    """Cut concatenated shapes apart again (a cheaper ``np.split``)."""
    parts, start = [], 0
    for length in lengths:
        parts.append(points[start:start + length])
        start += length
    return parts


def ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, exponent: float = 2.0) -> np.ndarray:
    """Vertices of a (super)ellipse, exponent 2 is an ellipse, larger is squarer."""
    c, s = _CIRCLE[:, 0], _CIRCLE[:, 1]
    if exponent != 2.0:
        power = 2.0 / exponent
        c = np.sign(c) * np.abs(c) ** power
        s = np.sign(s) * np.abs(s) ** power
    x, y = rx * c, ry * s
    if angle == 0.0:
        return _xy(cx + x, cy + y)
    ca, sa = math.cos(angle), math.sin(angle)
    return _xy(cx + x * ca - y * sa, cy + x * sa + y * ca)


def arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float, samples: int = 9) -> np.ndarray:
    """Points on an elliptical arc between two angles (radians, y down, 0 = +x)."""
    angles = np.linspace(start, stop, samples)
    return _xy(cx + rx * np.cos(angles), cy + ry * np.sin(angles))


def head_outline(head: Head) -> np.ndarray:
    """Canonical outline: a superellipse whose lower half narrows towards the chin."""
    shape = ellipse(0.0, 0.0, head.half_width, 1.0, exponent=head.squareness)
    narrowing = 1.0 - head.taper * np.clip(shape[:, 1], 0.0, 1.0)
    return _xy(shape[:, 0] * narrowing, shape[:, 1])


def eye_shape(eyes: Eyes, samples: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper and lower lid curves of one eye in eye-local coordinates (+x points outwards).

    Returns ``x``, ``upper_y``, ``lower_y`` as offsets from the pupil centre.
    """
    x = np.linspace(-eyes.width, eyes.width, samples)
    bulge = np.sqrt(np.maximum(1.0 - (x / eyes.width) ** 2, 0.0))
    lift = -eyes.tilt * x
    return x, lift - eyes.upper * bulge, lift + eyes.lower * bulge


def clip_to_lids(points: np.ndarray, x: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Clip eye-local points vertically between the lid curves (iris hidden under the lids)."""
    top = np.interp(points[:, 0], x, upper)
    bottom = np.interp(points[:, 0], x, lower)
    return _xy(points[:, 0], np.minimum(np.maximum(points[:, 1], top), bottom))


def brow_shape(eyes: Eyes, samples: int = 9) -> np.ndarray:
    """Eye-local crescent of the brow, thick in the middle, thinner at the ends."""
    x = np.linspace(-eyes.brow_length, eyes.brow_length, samples) + 0.2 * eyes.width
    t = x / eyes.brow_length
    base = -eyes.upper - eyes.brow_gap - eyes.brow_arch * (1 - t**2) - eyes.brow_slant * eyes.brow_length * t * 0.5
    half = eyes.brow_thickness * (1.0 - 0.5 * np.abs(t) ** 3)
    return np.concatenate([_xy(x, base - half), _xy(x[::-1], (base + half)[::-1])])


def landmarks(face: Face, frame: FaceFrame) -> np.ndarray:
    """The five MAFL points in output pixel coordinates, image-left first."""
    eyes, mouth = face.eyes, face.mouth
    eye_centres = frame.on_surface(np.array([[-eyes.spacing, eyes.y], [eyes.spacing, eyes.y]]), -EYE_RECESS)
    nose_tip = frame.on_surface(np.array([[0.0, face.nose.y]]), face.nose.length)
    corners = frame.on_surface(
        np.array([[-mouth.half_width, mouth.y - mouth.smile], [mouth.half_width, mouth.y - mouth.smile]]), LIP_LIFT
    )
    return np.concatenate([eye_centres, nose_tip, corners]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


class Canvas:
    """A supersampled PIL image taking shapes in *output* pixel coordinates."""

    def __init__(self, image: Image.Image, factor: int):
        self.image = image
        self.factor = factor
        self._draw = ImageDraw.Draw(image)
        self._blend = ImageDraw.Draw(image, "RGBA")

    def polygon(self, points: np.ndarray, fill) -> None:
        draw = self._blend if len(fill) == 4 else self._draw
        draw.polygon((np.asarray(points) * self.factor).ravel().tolist(), fill=fill)

    def line(self, points: np.ndarray, width: float, fill, closed: bool = False, round_joints: bool = True) -> None:
        points = np.asarray(points)
        if closed:
            points = np.concatenate([points, points[:1]])
        pixels = max(1, int(round(width * self.factor)))
        joint = "curve" if round_joints and pixels >= ROUND_JOINT_WIDTH else None
        self._draw.line((points * self.factor).ravel().tolist(), fill=fill, width=pixels, joint=joint)

    def downsample(self) -> Image.Image:
        return self.image.reduce(self.factor)


def _random_colour(rng: ScalarRng) -> Colour:
    kind = rng.random()
    if kind < 0.25:
        return _rgb(_skin(rng))
    if kind < 0.4:
        return _rgb(np.full(3, rng.uniform(0, 255)) + rng.normal(0, 8, 3))
    return _rgb(rng.uniform(0, 255, 3))


def _gradient(rng: ScalarRng, size: int) -> Image.Image:
    """Smooth blend of four random corner colours."""
    corners = rng.generator.integers(0, 256, (2, 2, 3), dtype=np.uint8)
    return Image.fromarray(corners).resize((size, size), Image.BILINEAR)


def _texture(rng: ScalarRng, size: int) -> Image.Image:
    """Blotchy colour noise: a few random cells smoothly upsampled."""
    cells = rng.integers(3, 17)
    noise = Image.fromarray(rng.generator.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
    return noise.resize((size, size), Image.BICUBIC)


BACKGROUNDS = ("cluttered", "plain")


def check_background(background: str) -> None:
    if background not in BACKGROUNDS:
        raise ValueError(f"synthetic: dataset option background must be one of {BACKGROUNDS}, got {background!r}")


def draw_background(rng: ScalarRng, size: int, factor: int, background: str = "cluttered") -> Canvas:
    """A gradient, optional blotchy texture (both at output resolution) and random clutter.

    ``background="plain"`` keeps only the gradient. It still makes every random draw of the
    cluttered background (painted, then discarded), so the rest of the face's stream, and
    with it the face, pose, lighting and landmarks, stays the same.
    """
    check_background(background)
    base = _gradient(rng, size)
    plain = base
    if rng.random() < TEXTURE_PROBABILITY:
        base = Image.blend(base, _texture(rng, size), rng.uniform(0.15, 0.6))
    canvas = Canvas(base.resize((size * factor,) * 2, Image.NEAREST), factor)
    for _ in range(rng.integers(*CLUTTER_COUNT)):
        _draw_clutter(rng, canvas, size)
    if background == "plain":
        canvas = Canvas(plain.resize((size * factor,) * 2, Image.NEAREST), factor)
    return canvas


def _draw_clutter(rng: ScalarRng, canvas: Canvas, size: int) -> None:
    """One random ellipse, box, polygon, straight line or ring."""
    kind, cx, cy, rx, ry, angle, width = (rng.random() for _ in range(7))
    colour = _random_colour(rng)
    cx, cy = (cx * 1.2 - 0.1) * size, (cy * 1.2 - 0.1) * size
    rx, ry = (0.04 + 0.31 * rx) * size, (0.04 + 0.31 * ry) * size
    angle *= math.pi
    if kind < 0.3:
        canvas.polygon(ellipse(cx, cy, rx, ry, angle), colour)
    elif kind < 0.55:
        canvas.polygon(ellipse(cx, cy, rx, ry, angle, exponent=12.0), colour)
    elif kind < 0.7:
        corners = rng.generator.uniform(-0.1, 1.1, (rng.integers(3, 6), 2))
        canvas.polygon(corners * size, colour)
    elif kind < 0.85:
        dx, dy = 3 * rx * math.cos(angle), 3 * rx * math.sin(angle)
        canvas.line(np.array([[cx - dx, cy - dy], [cx + dx, cy + dy]]), 0.5 + 3.5 * width, colour)
    else:
        canvas.line(ellipse(cx, cy, rx, ry, angle), 0.5 + 2.5 * width, colour, closed=True, round_joints=False)


def draw_body(canvas: Canvas, face: Face, frame: FaceFrame) -> None:
    """Shoulders (clothes) and neck."""
    a = face.head.half_width
    canvas.polygon(frame.on_outline(ellipse(0.0, 2.05, 1.7, 0.85)), face.clothes)
    neck = np.array([[-0.42 * a, 0.5], [0.42 * a, 0.5], [0.5 * a, 1.6], [-0.5 * a, 1.6]])
    canvas.polygon(frame.on_outline(neck), _rgb(_blend(face.head.skin, (40, 20, 10), 0.18)))


def _hair_top(hair: Hair, head: Head, samples: int = 24) -> np.ndarray:
    """Outer boundary of the hair over the top of the head, left side to right side."""
    start = math.asin(min(max(hair.side, -0.99), 0.99))
    angles = np.linspace(math.pi - start, 2 * math.pi + start, samples)
    curls = 1.0 + 0.05 * np.abs(np.sin(angles * 9.0)) if hair.style == HAIR_CURLY else 1.0
    x = (head.half_width + hair.volume) * np.cos(angles) * curls
    y = (1.0 + hair.volume) * np.sin(angles) * curls - 0.3 * hair.volume
    return _xy(x, y)


def draw_back_hair(canvas: Canvas, face: Face, frame: FaceFrame) -> None:
    """Long hair falling behind the head."""
    hair = face.hair
    if hair.style != HAIR_LONG:
        return
    top = _hair_top(hair, face.head)
    width = face.head.half_width + hair.volume + 0.1
    sides = np.array([[width, hair.length], [0.3, hair.length + 0.1], [-0.3, hair.length + 0.1], [-width, hair.length]])
    canvas.polygon(frame.on_outline(np.concatenate([top, sides])), hair.colour)


def draw_head(canvas: Canvas, face: Face, frame: FaceFrame) -> None:
    """Ears, then the face outline."""
    head = face.head
    ear_colour = _rgb(_blend(head.skin, (60, 20, 10), 0.12))
    for side in (-1, 1):
        ear = ellipse(side * head.half_width * 0.97, face.eyes.y + 0.15, 0.1, 0.17)
        canvas.polygon(frame.on_outline(ear), ear_colour)
    outline = frame.on_outline(head_outline(head))
    canvas.polygon(outline, head.skin)
    if face.outline:
        canvas.line(outline, 0.5, _rgb(_blend(head.skin, (40, 20, 10), 0.5)), closed=True)


def _hairline(hair: Hair, head: Head, samples: int = 25) -> np.ndarray:
    """Lower edge of the hair on the forehead, right to left, including any fringe."""
    x = np.linspace(0.98, -0.98, samples) * head.half_width
    edge = (np.abs(x) / head.half_width) ** 3
    y = hair.hairline * (1 - edge) + hair.side * edge + 0.08 * hair.parting * x
    width = np.clip(1.0 - np.abs(x) / (0.75 * head.half_width), 0.0, 1.0)
    fringe_y = hair.hairline + hair.fringe_depth * np.sqrt(width)
    if hair.fringe == FRINGE_ZIGZAG:
        fringe_y = fringe_y - 0.06 * np.abs(np.sin(x * 22.0))
    elif hair.fringe == FRINGE_SWEPT:
        fringe_y = fringe_y + 0.25 * hair.fringe_depth * (x / head.half_width) * np.sign(hair.parting + 1e-9)
    if hair.fringe != FRINGE_NONE:
        y = np.maximum(y, np.minimum(fringe_y, -0.3))
    return _xy(x, y)


def draw_hair(canvas: Canvas, face: Face, frame: FaceFrame) -> None:
    """The hair cap covering the top of the head down to the hairline."""
    hair, head = face.hair, face.head
    if hair.style == HAIR_BALD:
        return
    top = frame.on_outline(_hair_top(hair, head))
    line = frame.on_surface(_hairline(hair, head), 0.01)
    canvas.polygon(np.concatenate([top, line]), hair.colour)


def _eye_parts(eyes: Eyes, side: int) -> list[np.ndarray]:
    """Canonical sclera, iris + pupil, glint, upper lid, lower lid and brow of one eye."""
    x, upper, lower = eye_shape(eyes)
    upper_lid, lower_lid = _xy(x, upper), _xy(x, lower)
    almond = np.concatenate([upper_lid, lower_lid[::-1]])
    discs = np.concatenate([ellipse(0.0, 0.0, eyes.iris, eyes.iris), ellipse(0.0, 0.0, eyes.pupil, eyes.pupil)])
    # Eye-local x is mirrored for the left eye; the glint stays on the same side of both pupils.
    offset = 0.42 * (eyes.iris + eyes.pupil)
    glint = ellipse(side * offset, -offset, 0.35 * eyes.pupil, 0.35 * eyes.pupil)
    local = [almond, clip_to_lids(discs, x, upper, lower), clip_to_lids(glint, x, upper, lower), upper_lid, lower_lid,
             brow_shape(eyes)]
    origin, mirror = np.array([side * eyes.spacing, eyes.y]), np.array([side, 1.0])
    return [origin + part * mirror for part in local]


def draw_eyes(canvas: Canvas, face: Face, frame: FaceFrame) -> None:
    """Sclera, iris, pupil, highlight, lids and brow of both eyes (one projection)."""
    eyes = face.eyes
    parts = _eye_parts(eyes, -1) + _eye_parts(eyes, 1)
    lifts = ([-EYE_RECESS] * 5 + [0.0]) * 2
    projected = frame.parts_on_surface(parts, lifts)
    lid_width = frame.pixels_per_unit * LID_STROKE
    lower_lid_colour = _rgb(_blend(face.head.skin, (40, 20, 10), 0.4))
    for almond, discs, glint, upper_lid, lower_lid, brow in (projected[:6], projected[6:]):
        iris, pupil = _split(discs, [len(discs) // 2] * 2)
        canvas.polygon(almond, (236, 234, 228))
        canvas.polygon(iris, eyes.iris_colour)
        canvas.polygon(pupil, (14, 12, 14))
        canvas.polygon(glint, (250, 250, 250))
        canvas.line(upper_lid, lid_width, (30, 22, 20))
        canvas.line(lower_lid, lid_width * 0.5, lower_lid_colour)
        canvas.polygon(brow, eyes.brow_colour)


def draw_nose(canvas: Canvas, face: Face, frame: FaceFrame) -> None:
    """Bridge, nostrils, wings and tip; the tip sits ``nose.length`` above the surface.

    The nose tip landmark is the centre of the bulb, just above and between the nostrils.
    """
    nose = face.nose
    width = frame.pixels_per_unit * NOSE_STROKE
    top = face.eyes.y + 0.1
    if nose.style == NOSE_WEDGE:
        wedge = np.array([[0.0, top], [nose.nostril * 0.9, nose.y + nose.tip], [0.0, nose.y + nose.tip]])
        canvas.polygon(frame.on_surface(wedge, np.array([0.05, 0.8, 1.0]) * nose.length), nose.colour)
    elif nose.style == NOSE_BRIDGE:
        bridge_y = np.linspace(top, nose.y, 6)
        bridge = _xy(0.3 * nose.tip * (bridge_y - top) / (nose.y - top) - 0.01, bridge_y)
        canvas.line(frame.on_surface(bridge, np.linspace(0.1, 1.0, 6) * nose.length), width, nose.colour)
    nostrils, wings, bulb, tip = frame.parts_on_surface(*_nose_tip_shapes(nose))
    for nostril in _split(nostrils, [len(nostrils) // 2] * 2):
        canvas.polygon(nostril, _rgb(_blend(nose.colour, (20, 10, 10), 0.6)))
    if nose.style == NOSE_BULB:
        canvas.polygon(bulb, _rgb(_blend(face.head.skin, (255, 240, 230), 0.25)))
    for wing in _split(wings, [len(wings) // 2] * 2):
        canvas.line(wing, width, nose.colour)
    canvas.line(tip, width, nose.colour)


def _nose_tip_shapes(nose: Nose) -> tuple[list[np.ndarray], list[float]]:
    """Canonical nostrils, wings, bulb and the arc under the tip, with their lifts."""
    nostrils = [ellipse(side * nose.nostril, nose.y + 0.6 * nose.tip, nose.tip * 0.5, nose.tip * 0.3, side * 0.5)
                for side in (-1, 1)]
    wing_centre = nose.nostril + 0.1 * nose.tip
    wings = [arc(-wing_centre, nose.y + 0.2 * nose.tip, nose.tip * 0.8, nose.tip, np.pi + 1.2, np.pi - 1.6),
             arc(wing_centre, nose.y + 0.2 * nose.tip, nose.tip * 0.8, nose.tip, -1.2, 1.6)]
    bulb = ellipse(0.0, nose.y, nose.tip, nose.tip * 0.8)
    tip = arc(0.0, nose.y, nose.tip, nose.tip * 0.8, 0.2, np.pi - 0.2)
    shapes = [np.concatenate(nostrils), np.concatenate(wings), bulb, tip]
    return shapes, [0.8 * nose.length, 0.7 * nose.length, nose.length, nose.length]


def _lip_curves(mouth: Mouth, samples: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mouth curves from left to right corner: top of upper lip, upper/lower inner edges, bottom."""
    x = np.linspace(-mouth.half_width, mouth.half_width, samples)
    t = x / mouth.half_width
    middle = mouth.y - mouth.smile * t**2
    swell = np.sqrt(np.clip(1 - t**2, 0.0, 1.0))
    bow = 0.35 * mouth.upper * np.exp(-((t / 0.18) ** 2))
    gap = 0.5 * mouth.open * swell
    top = middle - gap - mouth.upper * swell + bow
    inner_top = middle - gap
    inner_bottom = middle + gap
    bottom = middle + gap + mouth.lower * swell

    def pack(y: np.ndarray) -> np.ndarray:
        return _xy(x, y)

    return pack(top), pack(inner_top), pack(inner_bottom), pack(bottom)


def draw_mouth(canvas: Canvas, face: Face, frame: FaceFrame) -> None:
    """Lips meeting exactly at the two corners, optionally open with teeth."""
    mouth = face.mouth
    top, inner_top, inner_bottom, bottom = (frame.on_surface(c, LIP_LIFT) for c in _lip_curves(mouth))
    canvas.polygon(np.concatenate([top, bottom[::-1]]), mouth.colour)
    line_colour = _rgb(_blend(mouth.colour, (30, 10, 10), 0.6))
    if mouth.open > 0:
        canvas.polygon(np.concatenate([inner_top, inner_bottom[::-1]]), (40, 16, 18))
        teeth = np.concatenate([inner_top, (0.6 * inner_top + 0.4 * inner_bottom)[::-1]])
        canvas.polygon(teeth[1:-1], (236, 232, 220))
    canvas.line(inner_top, frame.pixels_per_unit * LIP_STROKE, line_colour)


def draw_glasses(canvas: Canvas, face: Face, frame: FaceFrame) -> None:
    """Two rims around the eyes, a bridge, temple arms and an optional tint."""
    glasses, eyes = face.glasses, face.eyes
    if glasses is None:
        return
    width = frame.pixels_per_unit * glasses.rim
    inner_points = []
    for side in (-1, 1):
        rim = ellipse(side * eyes.spacing, eyes.y + 0.01, glasses.half_width, glasses.half_height,
                      exponent=glasses.squareness)
        rim_pixels = frame.on_surface(rim, 0.05)
        if glasses.tint[3]:
            canvas.polygon(rim_pixels, glasses.tint)
        canvas.line(rim_pixels, width, glasses.colour, closed=True)
        outer = side * (eyes.spacing + glasses.half_width)
        temple = np.array([[outer, eyes.y - 0.02], [side * face.head.half_width, eyes.y - 0.04]])
        canvas.line(frame.on_surface(temple, np.array([0.05, 0.0])), width, glasses.colour)
        inner_points.append([side * (eyes.spacing - glasses.half_width), eyes.y - 0.02])
    bridge = np.array([inner_points[0], [0.0, eyes.y - 0.05], inner_points[1]])
    canvas.line(frame.on_surface(bridge, 0.06), width, glasses.colour)


def draw_face(canvas: Canvas, face: Face, frame: FaceFrame) -> None:
    """Paint the whole figure back to front."""
    draw_body(canvas, face, frame)
    draw_back_hair(canvas, face, frame)
    draw_head(canvas, face, frame)
    draw_hair(canvas, face, frame)
    draw_nose(canvas, face, frame)
    draw_mouth(canvas, face, frame)
    draw_eyes(canvas, face, frame)
    draw_glasses(canvas, face, frame)


# --------------------------------------------------------------------------------------------
# Photometry
# --------------------------------------------------------------------------------------------


def _tone_curves(rng: ScalarRng) -> np.ndarray:
    """Per-channel lookup tables, flat [3 * 256]: colour cast, contrast, brightness, gamma."""
    levels = np.arange(256, dtype=np.float32) / 255.0
    cast = rng.normal(1.0, 0.06, 3).astype(np.float32)[:, None]
    contrast, brightness = rng.uniform(0.7, 1.2), rng.uniform(-0.12, 0.12)
    toned = (levels * cast - 0.5) * contrast + 0.5 + brightness
    return (np.clip(toned, 0.0, 1.0) ** rng.uniform(0.8, 1.25)).ravel()


def apply_lighting(rng: ScalarRng, image: np.ndarray, pose: Pose) -> np.ndarray:
    """Tone curves, a directional shading ramp across the face and sensor noise."""
    size = image.shape[0]
    lit = np.take(_tone_curves(rng), image + _CHANNEL_OFFSETS)
    pixels = np.arange(size, dtype=np.float32) + 0.5
    direction = rng.uniform(0, 2 * np.pi)
    dx, dy = math.cos(direction) / pose.scale, math.sin(direction) / pose.scale
    ramp = (pixels[None, :] - pose.centre[0]) * dx + (pixels[:, None] - pose.centre[1]) * dy
    lit *= 1.0 + rng.uniform(0.0, MAX_SHADING) * np.clip(ramp, -1.2, 1.2)[..., None]
    # Uniform noise with standard deviation up to MAX_NOISE (cheaper to draw than Gaussian).
    noise = rng.generator.random(image.shape, dtype=np.float32) - 0.5
    lit += noise * (rng.uniform(0.0, MAX_NOISE) * math.sqrt(12.0))
    lit *= 255.0
    lit += 0.5
    return np.clip(lit, 0.0, 255.0, out=lit).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Public rendering API
# --------------------------------------------------------------------------------------------


def face_rng(seed: int, index: int) -> ScalarRng:
    """The random stream that fully determines face ``index`` of generator ``seed``."""
    return ScalarRng(np.random.default_rng([seed, index]))


def sample_scene(rng: ScalarRng, size: int) -> tuple[Face, Pose, FaceFrame]:
    """Identity, pose and the resulting face frame: the first draws of a face's stream."""
    face = sample_face(rng)
    pose = sample_pose(rng, size)
    return face, pose, FaceFrame(face.head, pose)


def render_face(seed: int, index: int, size: int = 64, lighting: bool = True,
                background: str = "cluttered") -> tuple[np.ndarray, np.ndarray]:
    """Render face ``index`` of generator ``seed``: uint8 [size,size,3] and float32 [5,2] points.

    ``lighting=False`` skips the photometric stage (tone curves, shading, noise), leaving the
    flat drawing colours; it is the last stage, so nothing else changes.
    """
    rng = face_rng(seed, index)
    face, pose, frame = sample_scene(rng, size)
    canvas = draw_background(rng, size, SUPERSAMPLE, background)
    draw_face(canvas, face, frame)
    image = np.array(canvas.downsample())
    if lighting:
        image = apply_lighting(rng, image, pose)
    return image, landmarks(face, frame)


def render_faces(seed: int, indices, size: int = 64, background: str = "cluttered") -> tuple[np.ndarray, np.ndarray]:
    """Render several faces: uint8 [N,size,size,3] and float32 [N,5,2]."""
    indices = list(indices)
    images = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    points = np.empty((len(indices), NUM_POINTS, 2), dtype=np.float32)
    for row, index in enumerate(indices):
        images[row], points[row] = render_face(seed, index, size, background=background)
    return images, points


# --------------------------------------------------------------------------------------------
# Splits and cache
# --------------------------------------------------------------------------------------------

# Rendered splits kept in this process, most recently used last.
_MEMORY: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
MEMORY_CACHE_ENTRIES = 6


def split_indices(split: str, n: int) -> range:
    """The face indices of ``split``: ``n`` consecutive indices from the split's offset."""
    if split not in SPLIT_OFFSETS:
        raise KeyError(f"unknown split {split!r}; valid: {', '.join(SPLIT_OFFSETS)}")
    if not 0 <= n <= SPLIT_STRIDE:
        raise ValueError(f"{split}: size must be in [0, {SPLIT_STRIDE}], got {n}")
    return range(SPLIT_OFFSETS[split], SPLIT_OFFSETS[split] + n)


def default_cache_dir() -> Path:
    """``$LMBENCH_CACHE/synthetic``, by default ``~/.cache/lmbench/synthetic``."""
    return Path(os.environ.get("LMBENCH_CACHE") or Path.home() / ".cache" / "lmbench").expanduser() / "synthetic"


def cache_path(directory: Path, seed: int, size: int, split: str, n: int, version: int | None = None,
               background: str = "cluttered") -> Path:
    """Where a rendered split lives on disk; the renderer version (default current) is in the name,
    and a non-default background."""
    version = RENDER_VERSION if version is None else version
    suffix = "" if background == "cluttered" else f"-{background}"
    return Path(directory) / f"v{version}-s{seed}-{size}-{split}-{n}{suffix}.npz"


def _read_cache(path: Path, size: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays, or None when the file is missing, unreadable or of the wrong shape."""
    try:
        with np.load(path) as stored:
            images, points = stored["images"], stored["points"]
    except (OSError, KeyError, ValueError, EOFError):
        return None
    if images.shape != (n, size, size, 3) or images.dtype != np.uint8 or points.shape != (n, NUM_POINTS, 2):
        return None
    return images, points.astype(np.float32, copy=False)


def _write_cache(path: Path, images: np.ndarray, points: np.ndarray) -> None:
    """Write atomically (temporary file beside the target, then rename); failures only warn."""
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, images=images, points=points)
    except OSError as error:
        warnings.warn(f"synthetic: could not write the cache file {path}: {error}", stacklevel=3)


def load_split(
    seed: int, split: str, n: int, size: int = 64, cache_dir: Path | None = None, background: str = "cluttered"
) -> tuple[np.ndarray, np.ndarray]:
    """Rendered images and points of a split, from memory, from ``cache_dir`` or freshly rendered.

    The returned arrays are shared between callers and therefore read-only.
    """
    key = (RENDER_VERSION, seed, size, split, n, background)
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    path = cache_path(cache_dir, seed, size, split, n, background=background) if cache_dir is not None else None
    arrays = _read_cache(path, size, n) if path is not None else None
    if arrays is None:
        arrays = render_faces(seed, split_indices(split, n), size, background)
        if path is not None:
            _write_cache(path, *arrays)
    for array in arrays:
        array.flags.writeable = False
    _MEMORY[key] = arrays
    while len(_MEMORY) > MEMORY_CACHE_ENTRIES:
        _MEMORY.popitem(last=False)
    return arrays


def clear_memory_cache() -> None:
    """Forget the splits held in this process (the disk cache is kept)."""
    _MEMORY.clear()


def build_synthetic(
    root: str | Path | None = None,
    image_size: int = 64,
    seed: int = 0,
    render_seed: int = 0,
    train_size: int = DEFAULT_SIZES["train"],
    reg_train_size: int = DEFAULT_SIZES["reg_train"],
    test_size: int = DEFAULT_SIZES["test"],
    cache: bool = True,
    background: str = "cluttered",
    **_,
) -> DatasetSplits:
    """The ``synthetic`` dataset: three disjoint splits of rendered faces with MAFL points.

    ``root``, if given, is the cache directory (default :func:`default_cache_dir`);
    ``cache=False`` renders without touching the disk. ``background="plain"`` (option
    ``dataset_options.background``) replaces the textures and clutter behind every face by its
    smooth gradient; the faces, poses, lighting and landmarks stay the same. The faces are those of generator
    ``render_seed`` (option ``dataset_options.render_seed``, default 0). ``seed`` is the
    run's seed and deliberately does not change the data: runs that differ only in their
    seed train and are scored on the same faces, so their spread is the method's own.
    """
    check_background(background)  # before any cache lookup
    cache_dir = (Path(root).expanduser() if root is not None else default_cache_dir()) if cache else None
    sizes = {"train": int(train_size), "reg_train": int(reg_train_size), "test": int(test_size)}
    splits = {}
    for split, n in sizes.items():
        images, points = load_split(int(render_seed), split, n, int(image_size), cache_dir, str(background))
        splits[split] = ImageSplit(images, points)
    info = {
        "generator": "lmbench.datasets.synthetic",
        "render_version": RENDER_VERSION,
        "render_seed": int(render_seed),
        "background": str(background),
        "original_coordinates": "input",  # rendered at the input size: the inputs are the originals
        "image_size": int(image_size),
        "supersample": SUPERSAMPLE,
        "index_ranges": {split: [r.start, r.stop] for split, r in
                         ((split, split_indices(split, n)) for split, n in sizes.items())},
        "cache_dir": str(cache_dir) if cache_dir is not None else None,
    }
    return DatasetSplits("synthetic", MAFL_SCHEMA, splits["train"], splits["reg_train"], splits["test"], info=info)


@hookimpl
def register_datasets():
    return [
        DatasetSpec(
            name="synthetic",
            description="procedurally rendered cartoon faces with exact MAFL points (no download)",
            builder=build_synthetic,
            layout="embedded: rendered on first use and cached under $LMBENCH_CACHE/synthetic",
            embedded=True,
        )
    ]
