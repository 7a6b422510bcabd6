"""300-W (Sagonas et al. 2013), registered as ``300w``.

Every image has a ``.pts`` file beside it (same stem): ``version: 1``, ``n_points: 68``,
``{``, 68 lines ``x y``, ``}``. The points follow the 1-based MATLAB convention, where
pixel (row r, column c), counted from 1, has its centre at (c, r). In lmbench's continuous
coordinates that pixel is (row r-1, column c-1) with centre (c - 0.5, r - 0.5), so every
point becomes ``(x - 0.5, y - 0.5)``.

Schema: the 68 points, normalised by the outer eye corners 36 and 45 (0-based). Option
``points=5``: the 5-point reduction (eye centres mean(36..41) and mean(42..47), nose tip
30, mouth corners 48 and 54), normalised by the eye centres. ``gt_box`` crops around the
5-point reduction in both cases.

Split (the common choice, e.g. Thewlis et al. 2019): ``train`` = ``reg_train`` =
lfpw/trainset + helen/trainset + afw (3,148 images); ``test`` (option ``test_set``) =
``full``: lfpw/testset + helen/testset + ibug (689), ``common`` (554) or ``challenging``
(ibug, 135). Alternatively a flat folder with ``split.txt`` at the root (or option
``split_file``: a path relative to the root, or absolute) whose lines are ``train PATH`` or
``test PATH`` (image paths relative to the root, each with its .pts beside it).

Default protocol ``resize``: right for pre-cropped faces only. The raw 300-W images are
whole photographs; cropping them without a face detector means ``gt_box``, which leaks the
test annotations (a known limitation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmbench.data import MAFL_SCHEMA, LandmarkSchema
from lmbench.hookspecs import hookimpl
from lmbench.prepare import cached_dataset
from lmbench.sources import (
    IMAGE_EXTENSIONS, DataError, Listing, Problems, Record, drop_missing, numbered_lines, relative_image,
)

NUM_POINTS = 68
SCHEMA_68 = LandmarkSchema(tuple(f"p{i:02d}" for i in range(NUM_POINTS)), eye_indices=(36, 45))
TRAIN_SETS = ("lfpw/trainset", "helen/trainset", "afw")
TEST_SETS = {"common": ("lfpw/testset", "helen/testset"), "challenging": ("ibug",),
             "full": ("lfpw/testset", "helen/testset", "ibug")}
LAYOUT = "lfpw/ and helen/ {trainset,testset}/, afw/, ibug/: images with .pts beside (or split.txt: 'train|test PATH')"
SPLIT_FILE = "split.txt"


def read_pts(path: Path, problems: Problems) -> np.ndarray | None:
    """68 points from a .pts file, converted from 1-based MATLAB to continuous pixel coordinates."""
    lines = list(numbered_lines(path))
    header = {}
    body_start = None
    for position, (number, text) in enumerate(lines):
        if text == "{":
            body_start = position + 1
            break
        key, colon, value = text.partition(":")
        if not colon:
            problems.report(f"{path}:{number}", f"malformed header line {text!r} (expected 'key: value' or '{{')")
            return None
        header[key.strip()] = value.strip()
    if body_start is None:
        problems.report(f"{path}:1", "no '{' opening the point list")
        return None
    if header.get("n_points") != str(NUM_POINTS):
        problems.report(f"{path}:{lines[0][0]}", f"expected n_points: {NUM_POINTS}, got {header.get('n_points')!r}")
        return None
    body = lines[body_start:body_start + NUM_POINTS + 1]
    if len(body) != NUM_POINTS + 1 or body[-1][1] != "}":
        last = body[-1][0] if body else lines[-1][0]
        problems.report(f"{path}:{last}", f"expected {NUM_POINTS} 'x y' lines then '}}'")
        return None
    points = np.empty((NUM_POINTS, 2))
    for row, (number, text) in enumerate(body[:-1]):
        fields = text.split()
        try:
            points[row] = [float(fields[0]), float(fields[1])]
            if len(fields) != 2 or not np.all(np.isfinite(points[row])):
                raise ValueError
        except (ValueError, IndexError):
            problems.report(f"{path}:{number}", f"malformed point line {text!r} (expected 'x y')")
            return None
    return points - 0.5


def five_points(points: np.ndarray) -> np.ndarray:
    """The 5-point reduction of 68 points: eye centres, nose tip, mouth corners."""
    points = np.asarray(points)
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])


def _image_for(pts: Path) -> Path | None:
    for extension in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        candidate = pts.with_suffix(extension)
        if candidate.exists():
            return candidate
    return None


def record_for(image: Path, where: str, problems: Problems) -> Record | None:
    pts = image.with_suffix(".pts")
    if not pts.exists():
        problems.report(where, f"no .pts file beside {image}")
        return None
    points = read_pts(pts, problems)
    return None if points is None else Record(image, points, where)


def records_in(root: Path, subset: str, problems: Problems) -> list[Record]:
    folder = root / subset
    if not folder.is_dir():
        raise DataError(f"{root}: missing 300-W subset folder {subset}/ (expected layout: {LAYOUT})")
    records = []
    for pts in sorted(folder.glob("*.pts")):
        image = _image_for(pts)
        if image is None:
            problems.report(str(pts), "no image beside this .pts file")
            continue
        points = read_pts(pts, problems)
        if points is not None:
            records.append(Record(image, points, str(pts)))
    return records


def records_from_split_file(root: Path, split_file: str, problems: Problems) -> dict[str, list[Record]]:
    path = Path(split_file) if Path(split_file).is_absolute() else root / split_file
    if not path.exists():
        raise DataError(f"300w option split_file: {path} does not exist")
    out: dict[str, list[Record]] = {"train": [], "test": []}
    for number, text in numbered_lines(path):
        fields = text.split(maxsplit=1)
        where = f"{path}:{number}"
        if len(fields) != 2 or fields[0] not in out:
            problems.report(where, f"malformed line {text!r} (expected 'train PATH' or 'test PATH')")
            continue
        image = relative_image(root, fields[1])
        if not image.is_file():
            problems.report(where, f"missing image {image}")
            continue
        record = record_for(image, where, problems)
        if record is not None:
            out[fields[0]].append(record)
    return out


def list_300w(root: Path, problems: Problems, points: int = 68, test_set: str = "full",
              split_file: str | None = None) -> Listing:
    if points not in (68, 5):
        raise ValueError(f"300w option points must be 68 or 5, got {points!r}")
    if test_set not in TEST_SETS:
        raise ValueError(f"300w option test_set must be one of {', '.join(TEST_SETS)}, got {test_set!r}")
    if split_file is None and not _standard(root) and (root / SPLIT_FILE).exists():
        split_file = SPLIT_FILE
    if split_file:
        found = records_from_split_file(root, split_file, problems)
        train, test = found["train"], found["test"]
        described = f"split file {split_file}"
    else:
        train = [r for subset in TRAIN_SETS for r in records_in(root, subset, problems)]
        test = [r for subset in TEST_SETS[test_set] for r in records_in(root, subset, problems)]
        described = f"train = {' + '.join(TRAIN_SETS)}; test = {test_set}: {' + '.join(TEST_SETS[test_set])}"
    train, test = drop_missing(train, problems), drop_missing(test, problems)
    if points == 5:
        train = [Record(r.path, five_points(r.points), r.where) for r in train]
        test = [Record(r.path, five_points(r.points), r.where) for r in test]
    schema = MAFL_SCHEMA if points == 5 else SCHEMA_68
    info = {"splits": described + " (reg_train = train)", "points": points,
            "coordinates": ".pts 1-based MATLAB -> continuous pixels: (x - 0.5, y - 0.5)"}
    return Listing(schema, {"train": train, "reg_train": train, "test": test}, info,
                   box_points=five_points if points == 68 else None)


def _standard(root: Path) -> bool:
    return all((Path(root) / subset).is_dir() for subset in TRAIN_SETS + TEST_SETS["full"])


def _present(root: Path) -> bool:
    return _standard(root) or (Path(root) / SPLIT_FILE).exists()


SPEC = cached_dataset(
    "300w", "300-W faces with 68 landmarks (option points=5 for the 5-point reduction)",
    list_300w, layout=LAYOUT, required=[], default_protocol="resize",
    options={"points": 68, "test_set": "full", "split_file": None}, present=_present,
)


@hookimpl
def register_datasets():
    return [SPEC]
