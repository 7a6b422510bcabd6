"""A tiny MPII release written with scipy.io.savemat in the official nested layout.

``RELEASE.annolist`` is a 1xN struct array (``image.name``, ``annorect``), each
``annorect`` a 1xM struct array with ``x1 y1 x2 y2``, ``annopoints.point`` (1xP struct
array of ``x y id is_visible``), ``objpos.{x, y}`` and ``scale``; ``img_train`` is 1xN.
Coordinates are 1-based like the real file. Each joint is drawn as a bright Gaussian blob
so that tests can find it in the crops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

IMAGE_SIZE = (160, 140)  # width, height
SCALE = 0.5  # person box side = 200 * 0.5 * 1.25 = 125 px


def _struct_array(records: list[dict]) -> np.ndarray:
    fields = list(records[0])
    array = np.zeros((1, len(records)), dtype=[(name, object) for name in fields])
    for i, record in enumerate(records):
        for name in fields:
            array[0, i][name] = record[name]
    return array


def person(cx: float, cy: float, joints: dict[int, tuple[float, float, object]]) -> dict:
    """An annorect record; ``joints`` maps id -> (x, y, is_visible) in 1-based pixels."""
    points = [{"x": x, "y": y, "id": joint, "is_visible": vis} for joint, (x, y, vis) in joints.items()]
    return {
        "x1": cx - 10.0, "y1": cy - 40.0, "x2": cx + 10.0, "y2": cy - 20.0,
        "annopoints": {"point": _struct_array(points)} if points else np.zeros((0, 0)),
        "objpos": {"x": cx, "y": cy},
        "scale": SCALE,
    }


def default_people() -> list[tuple[str, int, list[dict]]]:
    """(image name, img_train flag, persons) of the fixture."""
    body = {9: (80.0, 30.0, 1), 8: (80.0, 45.0, 1), 12: (65.0, 55.0, "0"), 3: (90.0, 95.0, np.zeros((0, 0)))}
    images = []
    for i in range(6):
        shift = 4.0 * i
        joints = {j: (x + shift, y, v) for j, (x, y, v) in body.items()}
        people = [person(80.0 + shift, 70.0, joints)]
        if i == 0:
            people.append(person(40.0, 70.0, {}))  # a person without joints: skipped
        images.append((f"{i:05d}.jpg", 1, people))
    images.append(("test0.jpg", 0, [person(80.0, 70.0, body)]))  # img_train == 0: not used
    return images


def draw(joints: list[tuple[float, float]]) -> Image.Image:
    """A dark image with a Gaussian blob (std 2.5 px) at each 1-based joint position."""
    w, h = IMAGE_SIZE
    xs, ys = np.meshgrid(np.arange(w) + 1.0, np.arange(h) + 1.0)
    image = np.full((h, w), 20.0)
    for x, y in joints:
        image += 230.0 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 2.5**2))
    grey = np.clip(image, 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, -1))


def write_mpii_fixture(root: Path, images=None) -> Path:
    """Write images/ and mpii_human_pose_v1_u12_1.mat under ``root``; returns ``root``."""
    images = images or default_people()
    (root / "images").mkdir(parents=True, exist_ok=True)
    annolist = []
    for name, _, people in images:
        joints = [(p["x"], p["y"]) for rect in people if isinstance(rect["annopoints"], dict)
                  for p in rect["annopoints"]["point"][0]]
        draw(joints).save(root / "images" / name, quality=95)
        rects = people[0] if len(people) == 1 else _struct_array(people)
        annolist.append({"image": {"name": name}, "annorect": _struct_array([rects]) if len(people) == 1 else rects})
    release = {"annolist": _struct_array(annolist), "img_train": np.array([[flag for _, flag, _ in images]])}
    savemat(root / "mpii_human_pose_v1_u12_1.mat", {"RELEASE": release})
    return root
