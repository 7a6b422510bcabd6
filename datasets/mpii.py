"""The ``mpii`` dataset: MPII Human Pose (Andriluka et al., CVPR 2014) as person crops.

Layout under the data root::

    images/<name>.jpg
    mpii_human_pose_v1_u12_1.mat      (the RELEASE struct of the official release)

What the plugin does
--------------------
- Reads ``RELEASE.annolist[i].image.name`` and, per person, ``annorect[j]``:
  ``annopoints.point[k].{x, y, id, is_visible}``, ``objpos.{x, y}``, ``scale`` (person
  height / 200 px) and the head box ``x1, y1, x2, y2``; ``RELEASE.img_train`` flags.
- Only persons of images with ``img_train == 1`` are used: the test annotations are not
  public. Persons without any annotated joint (``annopoints`` empty) are skipped and
  counted in ``info["skipped_no_joints"]``; persons without objpos/scale likewise in
  ``info["skipped_no_position"]``.
- The ``img_train`` images are split by *image* (so that people of one photo never
  straddle two splits) with a fixed seed (``split_seed``, not the run seed, so that every
  run sees the same validation set): ``val_fraction`` (default 10 %) of them are the
  validation images, whose persons are divided in two disjoint halves ``reg_train`` and
  ``test``; the rest are ``train`` (pretraining).
- Each person is cropped as a square of side ``200 * scale * box_scale`` px around
  ``objpos`` moved down by ``centre_shift * scale`` px, and resized (antialiased) to the
  image size. ``box_scale = 1.25`` and ``centre_shift = 15`` are the usual choices of the
  public hourglass / HRNet MPII loaders (Newell et al. 2016; Xiao et al. 2018).
- MPII coordinates are 1-based MATLAB pixel indices; ``x - 0.5`` is the continuous
  coordinate of :mod:`lmbench.data`. Joints and head boxes go through the same crop
  mapping as the pixels.
- All 16 joints are kept in MPII's id order (:data:`JOINT_NAMES`). A joint that is not
  annotated is *not* dropped: ``annotated`` is False, ``visible`` is False and its point is
  set to the crop centre so that ``points`` stays finite for lmbench's evaluator.
  ``reg_train``/``test`` persons need an annotated upper neck and head top (the NME
  normaliser); others are left out and counted in ``info``.
  ``visible`` is MPII's ``is_visible`` flag for annotated joints (an empty flag counts as
  visible). Training code should mask with ``annotated``.

The schema's "eye" pair is (upper neck, head top): the head segment, so that lmbench's
NME is normalised by a head length. NME is *not* the MPII metric; the MPII metric is PCKh
(``lmbench pretrain`` reports it from ``head_boxes``).

Prepared splits are cached in process per (root, .mat mtime, image size, options).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lmbench.data import DatasetSplits, ImageSplit, LandmarkSchema
from lmbench.hookspecs import hookimpl
from lmbench.registry import DatasetSpec

MAT_FILE = "mpii_human_pose_v1_u12_1.mat"
IMAGE_DIR = "images"

JOINT_NAMES = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
)
NUM_JOINTS = len(JOINT_NAMES)
MPII_SCHEMA = LandmarkSchema(names=JOINT_NAMES, eye_indices=(8, 9))

_CACHE: dict[tuple, DatasetSplits] = {}


@dataclass
class PoseSplit(ImageSplit):
    """An :class:`ImageSplit` with per-joint masks and head boxes (crop pixels, x1 y1 x2 y2)."""

    annotated: np.ndarray | None = None  # bool [N, P]
    visible: np.ndarray | None = None  # bool [N, P]
    head_boxes: np.ndarray | None = None  # float32 [N, 4]

    def subset(self, index: np.ndarray) -> "PoseSplit":
        pick = (lambda a: None if a is None else a[index])
        sources = None if self.sources is None else [self.sources[i] for i in index]
        return PoseSplit(self.images[index], pick(self.points), sources, pick(self.to_original),
                         annotated=pick(self.annotated), visible=pick(self.visible), head_boxes=pick(self.head_boxes))


@dataclass
class Person:
    image: str
    centre: tuple[float, float]  # objpos, continuous pixel coordinates
    scale: float
    joints: np.ndarray  # [16, 2] continuous pixels, NaN where not annotated
    visible: np.ndarray  # bool [16]
    head_box: np.ndarray  # [4] continuous pixels (NaN if absent)


# -- reading the .mat ------------------------------------------------------------------------
def _items(value) -> list:
    """A MATLAB struct array as a list (``squeeze_me`` turns a 1-element array into the element)."""
    if isinstance(value, np.ndarray):
        return list(value.ravel())
    return [] if value is None else [value]


def _number(value) -> float | None:
    """A MATLAB scalar as float; None for an empty array or a non-numeric string."""
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.item()
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None if value is None else float(value)


def _field(struct, name: str):
    return getattr(struct, name, None) if struct is not None else None


def _visible_flag(value) -> bool:
    flag = _number(value)
    return True if flag is None else bool(flag)


def parse_person(image: str, rect) -> Person | str:
    """One ``annorect`` entry -> :class:`Person`, or the reason it is skipped."""
    annopoints = _field(rect, "annopoints")
    points = _items(_field(annopoints, "point")) if annopoints is not None and not isinstance(annopoints, np.ndarray) else []
    joints = np.full((NUM_JOINTS, 2), np.nan)
    visible = np.zeros(NUM_JOINTS, bool)
    for point in points:
        joint, x, y = _number(_field(point, "id")), _number(_field(point, "x")), _number(_field(point, "y"))
        if joint is None or x is None or y is None or not 0 <= joint < NUM_JOINTS:
            continue
        joints[int(joint)] = (x - 0.5, y - 0.5)
        visible[int(joint)] = _visible_flag(_field(point, "is_visible"))
    if np.isnan(joints[:, 0]).all():
        return "no_joints"
    objpos, scale = _field(rect, "objpos"), _number(_field(rect, "scale"))
    cx, cy = _number(_field(objpos, "x")), _number(_field(objpos, "y"))
    if cx is None or cy is None or scale is None or scale <= 0:
        return "no_position"
    box = [_number(_field(rect, key)) for key in ("x1", "y1", "x2", "y2")]
    head_box = np.array([np.nan if v is None else v - 0.5 for v in box])
    return Person(image, (cx - 0.5, cy - 0.5), scale, joints, visible, head_box)


def read_annotations(mat_path: Path) -> tuple[list[Person], dict]:
    """Persons of the ``img_train == 1`` images and the counts of skipped ones."""
    from scipy.io import loadmat

    if not mat_path.is_file():
        raise FileNotFoundError(f"MPII annotations not found: {mat_path} (expected {MAT_FILE} in the data root)")
    try:
        release = loadmat(str(mat_path), squeeze_me=True, struct_as_record=False)["RELEASE"]
    except Exception as error:
        raise ValueError(f"{mat_path}: cannot read the MPII RELEASE struct ({type(error).__name__}: {error})") from error
    annolist = _items(release.annolist)
    train_flags = np.atleast_1d(release.img_train).ravel()
    if len(train_flags) != len(annolist):
        raise ValueError(f"{mat_path}: img_train has {len(train_flags)} flags for {len(annolist)} images")
    persons, skipped = [], {"no_joints": 0, "no_position": 0}
    for entry, flag in zip(annolist, train_flags):
        if int(flag) != 1:
            continue
        name = str(_field(_field(entry, "image"), "name"))
        for rect in _items(_field(entry, "annorect")):
            parsed = parse_person(name, rect)
            if isinstance(parsed, str):
                skipped[parsed] += 1
            else:
                persons.append(parsed)
    return persons, skipped


# -- cropping ---------------------------------------------------------------------------------
def crop_box(person: Person, box_scale: float, centre_shift: float) -> tuple[float, float, float]:
    """(x0, y0, side) of the square person box in continuous pixels."""
    side = 200.0 * person.scale * box_scale
    cx, cy = person.centre[0], person.centre[1] + centre_shift * person.scale
    return cx - side / 2, cy - side / 2, side


def crop_image(image: Image.Image, x0: float, y0: float, side: float, size: int) -> np.ndarray:
    """The square [x0, x0+side] x [y0, y0+side] resized to ``size`` (black outside the photo)."""
    left, top = math.floor(x0), math.floor(y0)
    right, bottom = math.ceil(x0 + side), math.ceil(y0 + side)
    region = image.crop((left, top, right, bottom))
    box = (x0 - left, y0 - top, x0 - left + side, y0 - top + side)
    return np.asarray(region.resize((size, size), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)


def to_crop(points: np.ndarray, x0: float, y0: float, side: float, size: int) -> np.ndarray:
    """Continuous photo pixels -> crop pixels (any [..., 2] array)."""
    return (np.asarray(points, np.float64) - (x0, y0)) * (size / side)


def build_split(persons: list[Person], images_dir: Path, size: int, box_scale: float, centre_shift: float) -> PoseSplit:
    n = len(persons)
    images = np.zeros((n, size, size, 3), np.uint8)
    points = np.zeros((n, NUM_JOINTS, 2), np.float32)
    head_boxes = np.zeros((n, 4), np.float32)
    annotated = np.zeros((n, NUM_JOINTS), bool)
    visible = np.zeros((n, NUM_JOINTS), bool)
    to_original = np.zeros((n, 2, 3), np.float32)  # crop pixels -> photo pixels (the inverse of to_crop)
    opened: tuple[str, Image.Image] | None = None
    for row, person in enumerate(persons):
        if opened is None or opened[0] != person.image:
            path = images_dir / person.image
            if not path.is_file():
                raise FileNotFoundError(f"MPII image not found: {path} (named in {MAT_FILE})")
            with Image.open(path) as handle:
                opened = (person.image, handle.convert("RGB"))
        x0, y0, side = crop_box(person, box_scale, centre_shift)
        images[row] = crop_image(opened[1], x0, y0, side, size)
        present = ~np.isnan(person.joints[:, 0])
        points[row] = np.where(present[:, None], to_crop(person.joints, x0, y0, side, size), size / 2)
        head_boxes[row] = to_crop(person.head_box.reshape(2, 2), x0, y0, side, size).ravel()
        annotated[row], visible[row] = present, person.visible & present
        to_original[row] = [[side / size, 0.0, x0], [0.0, side / size, y0]]
    sources = [f"{p.image}#{p.centre[0] + 0.5:.0f},{p.centre[1] + 0.5:.0f}" for p in persons]
    return PoseSplit(images, points, sources, to_original, annotated=annotated, visible=visible, head_boxes=head_boxes)


# -- splits -----------------------------------------------------------------------------------
def split_images(names: list[str], val_fraction: float, split_seed: int) -> tuple[set, set, set]:
    """(train, reg_train, test) sets of image names: a seeded split by image."""
    unique = sorted(set(names))
    if not 0 < val_fraction < 1:
        raise ValueError(f"dataset option val_fraction must be in (0, 1), got {val_fraction}")
    n_val = max(2, int(round(val_fraction * len(unique))))
    if len(unique) < n_val + 1:
        raise ValueError(f"MPII: {len(unique)} annotated training images are too few for a train/validation split")
    order = np.random.default_rng(split_seed).permutation(len(unique))
    val = [unique[i] for i in order[:n_val]]
    train = {unique[i] for i in order[n_val:]}
    return train, set(val[: n_val // 2]), set(val[n_val // 2 :])


def build_mpii(
    root,
    image_size: int = 64,
    seed: int = 0,
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    box_scale: float = 1.25,
    centre_shift: float = 15.0,
    limit_images: int | None = None,
) -> DatasetSplits:
    """MPII person crops (see the module docstring). ``seed`` does not change the split."""
    if root is None:
        raise FileNotFoundError("dataset 'mpii' needs a data root (--data-root) holding images/ and " + MAT_FILE)
    root = Path(root)
    mat_path = root / MAT_FILE
    options = (val_fraction, split_seed, box_scale, centre_shift, limit_images)
    key = (str(root.resolve()), mat_path.stat().st_mtime_ns if mat_path.exists() else None, image_size, options)
    if key in _CACHE:
        return _CACHE[key]
    persons, skipped = read_annotations(mat_path)
    if limit_images is not None:
        keep = set(sorted({p.image for p in persons})[:limit_images])
        persons = [p for p in persons if p.image in keep]
    train, reg_train, test = split_images([p.image for p in persons], val_fraction, split_seed)
    parts = {name: build_split([p for p in persons if p.image in names], root / IMAGE_DIR, image_size, box_scale, centre_shift)
             for name, names in (("train", train), ("reg_train", reg_train), ("test", test))}
    # lmbench's NME divides by the neck-head distance: evaluation persons need both joints.
    dropped = 0
    for name in ("reg_train", "test"):
        keep = np.flatnonzero(parts[name].annotated[:, list(MPII_SCHEMA.eye_indices)].all(1))
        dropped += len(parts[name]) - len(keep)
        parts[name] = parts[name].subset(keep)
    info = {
        "source": "MPII Human Pose v1 (img_train == 1 persons; test annotations are not public)",
        "split": f"by image, seed {split_seed}: {val_fraction:.0%} validation images halved into reg_train/test",
        "crop": f"square 200*scale*{box_scale} px around objpos + ({0}, {centre_shift}*scale)",
        "persons": {name: len(split) for name, split in parts.items()},
        "skipped_no_joints": skipped["no_joints"],
        "skipped_no_position": skipped["no_position"],
        "skipped_eval_without_head_segment": dropped,
        "metric_note": "NME with (upper_neck, head_top) as the normaliser is not the MPII metric; use PCKh",
    }
    data = DatasetSplits("mpii", MPII_SCHEMA, parts["train"], parts["reg_train"], parts["test"], info)
    _CACHE[key] = data
    return data


def is_present(root: Path) -> bool:
    return (root / MAT_FILE).is_file() and (root / IMAGE_DIR).is_dir()


@hookimpl
def register_datasets():
    return [
        DatasetSpec(
            name="mpii",
            description="MPII Human Pose person crops, 16 joints (for detector pretraining; metric PCKh)",
            builder=build_mpii,
            layout=f"{IMAGE_DIR}/*.jpg and {MAT_FILE}",
            is_present=is_present,
            default_root="~/data/mpii",
        )
    ]
