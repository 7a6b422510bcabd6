"""AFLW "release-2": the recropped faces used by Zhang, Jakab and Thewlis (10,122 / 2,991).

Layout: ``aflw_{train,test}_images.txt`` (one relative image path a line) and
``aflw_{train,test}_keypoints.mat`` holding ``gt`` [N,5,2] in **(y, x)** order and ``hw``
[N,2], the (height, width) of the frame the keypoints are given in. Image paths are
relative to ``output/`` when that folder exists (as in the original release), else to the
root. Points are swapped to (x, y) and rescaled from ``hw`` to the decoded image size (a
no-op when they agree); otherwise used unchanged as continuous pixel coordinates.

Splits: ``train`` = ``reg_train`` = the train list (stored once in the cache), ``test`` = the
test list. Default protocol ``resize``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmbench.data import MAFL_SCHEMA
from lmbench.hookspecs import hookimpl
from lmbench.prepare import cached_dataset
from lmbench.sources import DataError, Listing, Problems, Record, drop_missing, numbered_lines, relative_image

LAYOUT = "aflw_{train,test}_images.txt, aflw_{train,test}_keypoints.mat (gt in (y, x), hw), output/<listed paths>"


def read_keypoints(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``gt`` [N,5,2] swapped to (x, y) and ``hw`` [N,2] from a release-2 keypoint file."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except (OSError, ValueError, TypeError) as error:
        raise DataError(f"{path}: cannot read the .mat file: {error}") from None
    for key in ("gt", "hw"):
        if key not in mat:
            raise DataError(f"{path}: no variable {key!r} (found {', '.join(k for k in mat if not k.startswith('__'))})")
    gt, hw = np.asarray(mat["gt"], np.float64), np.asarray(mat["hw"], np.float64)
    if gt.ndim != 3 or gt.shape[1:] != (5, 2):
        raise DataError(f"{path}: gt must be [N,5,2], got {list(gt.shape)}")
    if hw.shape != (len(gt), 2):
        raise DataError(f"{path}: hw must be [{len(gt)},2] to match gt, got {list(hw.shape)}")
    return gt[..., ::-1].copy(), hw


def image_base(root: Path) -> Path:
    return root / "output" if (root / "output").is_dir() else root


def list_split(root: Path, stem: str, problems: Problems) -> list[Record]:
    names_path, mat_path = root / f"aflw_{stem}_images.txt", root / f"aflw_{stem}_keypoints.mat"
    for path in (names_path, mat_path):
        if not path.exists():
            raise DataError(f"{root}: missing {path.name} (expected layout: {LAYOUT})")
    names = list(numbered_lines(names_path))
    points, hw = read_keypoints(mat_path)
    if len(names) != len(points):
        raise DataError(f"{names_path} lists {len(names)} images but {mat_path} has {len(points)} rows")
    base = image_base(root)
    records = []
    for row, ((number, text), xy, size) in enumerate(zip(names, points, hw)):
        if not np.all(np.isfinite(xy)) or np.any(size <= 0):
            problems.report(f"{mat_path}: row {row + 1}", "malformed keypoints (non-finite gt or non-positive hw)")
            continue
        records.append(Record(relative_image(base, text.split()[0]), xy, f"{names_path}:{number}", tuple(size)))
    return drop_missing(records, problems)


def list_aflw(root: Path, problems: Problems) -> Listing:
    train = list_split(root, "train", problems)
    test = list_split(root, "test", problems)
    info = {"splits": "train = reg_train = aflw_train_images.txt; test = aflw_test_images.txt"}
    return Listing(MAFL_SCHEMA, {"train": train, "reg_train": train, "test": test}, info)


SPEC = cached_dataset(
    "aflw", "AFLW release-2 recropped faces with 5 landmarks (10,122 train / 2,991 test)",
    list_aflw, layout=LAYOUT,
    required=[("aflw_train_images.txt",), ("aflw_test_images.txt",), ("aflw_train_keypoints.mat",),
              ("aflw_test_keypoints.mat",)],
    default_protocol="resize",
)


@hookimpl
def register_datasets():
    return [SPEC]
