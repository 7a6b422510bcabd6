"""Tiny datasets written in each original on-disk format, for the dataset and cache tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, width: int = 40, height: int = 40, colour=(90, 120, 150), spot=None) -> Path:
    """A flat RGB image (JPEG or PNG by suffix); ``spot=(row, col)`` makes that one pixel white."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.empty((height, width, 3), np.uint8)
    array[:] = colour
    if spot is not None:
        array[spot[0], spot[1]] = 255
    Image.fromarray(array).save(path)
    return path


def write_mtfl(root: Path, n_train: int = 3, n_test: int = 2, n_unlabeled: int = 2) -> Path:
    """MTFL layout: backslash paths, a leading space on some lines, attributes, unlabeled.txt."""
    lines = []
    for i in range(n_train):
        write_image(root / "lfw_5590" / f"Person_{i:04d}.jpg")
        xs, ys = [10 + i, 30, 20, 12, 28], [14, 14 + i, 22, 30, 30]
        lead = " " if i % 2 else ""
        lines.append(f"{lead}lfw_5590\\Person_{i:04d}.jpg " + " ".join(f"{v:.6f}" for v in xs + ys) + " 1 2 2 3")
    (root / "training.txt").write_text("\n".join(lines) + "\n")
    lines = []
    for i in range(n_test):
        write_image(root / "AFLW" / f"{i:04d}-image.jpg")
        lines.append(f"AFLW/{i:04d}-image.jpg 10 30 20 12 28 14 14 22 30 30 -1 -1 -1 -1")
    (root / "testing.txt").write_text("\n".join(lines) + "\n")
    names = []
    for i in range(n_unlabeled):
        write_image(root / "net_7876" / f"{i}_0_0.jpg")
        names.append(f"net_7876/{i}_0_0.jpg")
    (root / "unlabeled.txt").write_text("\n".join(names) + "\n")
    return root


def celeba_points(i: int) -> list[int]:
    return [60 + i, 110, 118, 110 + i, 89, 135, 68, 155, 110, 155]


def write_celeba(root: Path, archive: bool = False, n: int = 6) -> Path:
    """CelebA aligned (178x218) with count + header lines, MAFL train = 0..1, test = 2..3."""
    images = root / ("Img/img_align_celeba" if archive else "img_align_celeba")
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for name in names:
        write_image(images / name, 178, 218)
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    rows = [f"{name} " + " ".join(f"{v:4d}" for v in celeba_points(i)) for i, name in enumerate(names)]
    anno = root / ("Anno" if archive else "")
    anno.mkdir(parents=True, exist_ok=True)
    (anno / "list_landmarks_align_celeba.txt").write_text(f"{n}\n{header}\n" + "\n".join(rows) + "\n")
    evaluation = root / ("Eval" if archive else "")
    evaluation.mkdir(parents=True, exist_ok=True)
    (evaluation / "list_eval_partition.txt").write_text("\n".join(f"{name} {i % 3}" for i, name in enumerate(names)) + "\n")
    mafl = root / "MAFL"
    mafl.mkdir(parents=True, exist_ok=True)
    (mafl / "training.txt").write_text(f"{names[0]}\n{names[1]}\n")
    (mafl / "testing.txt").write_text(f"{names[2]}\n{names[3]}\n")
    return root


def write_aflw(root: Path, image_size=(50, 40), hw=(100, 80)) -> Path:
    """AFLW release-2: output/ images, gt [N,5,2] in (y, x) in an ``hw`` frame."""
    from scipy.io import savemat

    for stem, count in (("train", 3), ("test", 2)):
        paths = []
        for i in range(count):
            rel = f"{stem}/image{i:05d}.jpg"
            write_image(root / "output" / rel, image_size[1], image_size[0])
            paths.append(rel)
        (root / f"aflw_{stem}_images.txt").write_text("\n".join(paths) + "\n")
        xy = np.array([[20, 30], [60, 30], [40, 50], [25, 70], [55, 70]], np.float64)
        gt = np.repeat(xy[None, :, ::-1], count, axis=0)  # stored as (y, x)
        savemat(root / f"aflw_{stem}_keypoints.mat", {"gt": gt, "hw": np.tile(np.array(hw, np.float64), (count, 1))})
    return root


def pts_text(points: np.ndarray) -> str:
    body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points)
    return f"version: 1\nn_points:  68\n{{\n{body}\n}}\n"


def face68(shift: float = 0.0) -> np.ndarray:
    """68 points (1-based MATLAB coordinates) on a 60x60 image."""
    rng = np.random.default_rng(int(shift))
    points = rng.uniform(10, 50, (68, 2))
    points[36], points[45] = [15 + shift, 20], [45, 20]
    return points


def write_300w(root: Path) -> Path:
    subsets = ["lfpw/trainset", "helen/trainset", "afw", "lfpw/testset", "helen/testset", "ibug"]
    for k, subset in enumerate(subsets):
        image = write_image(root / subset / f"img{k}.jpg", 60, 60)
        image.with_suffix(".pts").write_text(pts_text(face68(k)))
    return root
