"""MTFL (Zhang et al., ECCV 2014), also the "AFLW, MTFL split" benchmark.

Layout: ``training.txt`` and ``testing.txt`` with lines
``path x1 x2 x3 x4 x5 y1 y2 y3 y4 y5 gender smile glasses pose`` (left eye, right eye, nose,
left and right mouth corner; paths relative to the root, possibly with backslashes, lines
possibly starting with a space), and optionally ``unlabeled.txt``: extra images for
unsupervised training only, one path a line.

Splits: ``train`` = training.txt images + unlabeled.txt images (option ``unlabeled``),
``reg_train`` = training.txt, ``test`` = testing.txt. Coordinates are used unchanged as
continuous pixel coordinates of the image they annotate.
Default protocol ``resize`` (the whole, already cropped, image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmbench.data import MAFL_SCHEMA
from lmbench.hookspecs import hookimpl
from lmbench.prepare import cached_dataset
from lmbench.sources import (
    Listing, Problems, Record, drop_missing, numbered_lines, parse_numbers, relative_image, require_file,
)

LAYOUT = "training.txt, testing.txt (path x1..x5 y1..y5 attrs), optional unlabeled.txt; images at the listed paths"
ATTRIBUTES = ("gender", "smile", "glasses", "pose")


def read_annotations(root: Path, path: Path, problems: Problems) -> list[Record]:
    """Records of an MTFL annotation file; malformed lines are reported with file and line."""
    records = []
    for number, text in numbered_lines(path):
        where = f"{path}:{number}"
        fields = text.split()
        if len(fields) not in (11, 11 + len(ATTRIBUTES)):
            problems.report(where, f"malformed line: expected 'path x1..x5 y1..y5 gender smile glasses pose' "
                                   f"(11 or 15 fields), got {len(fields)} fields")
            continue
        values = parse_numbers(fields[1:], where, problems)
        if values is None:
            continue
        points = np.stack([values[0:5], values[5:10]], axis=1)
        records.append(Record(relative_image(root, fields[0]), points, where))
    return records


def read_image_list(root: Path, path: Path) -> list[Record]:
    """Records (no points) of a file with one image path a line (the first column)."""
    return [Record(relative_image(root, text.split()[0]), None, f"{path}:{number}")
            for number, text in numbered_lines(path)]


def list_mtfl(root: Path, problems: Problems, unlabeled: bool = True) -> Listing:
    training = drop_missing(read_annotations(root, require_file(root, ["training.txt"], "MTFL training.txt"), problems), problems)
    testing = drop_missing(read_annotations(root, require_file(root, ["testing.txt"], "MTFL testing.txt"), problems), problems)
    extra: list[Record] = []
    if unlabeled and (root / "unlabeled.txt").exists():
        extra = drop_missing(read_image_list(root, root / "unlabeled.txt"), problems)
    info = {"splits": "train = training.txt + unlabeled.txt images; reg_train = training.txt; test = testing.txt",
            "n_unlabeled": len(extra)}
    return Listing(MAFL_SCHEMA, {"train": training + extra, "reg_train": training, "test": testing}, info)


SPEC = cached_dataset(
    "mtfl", "MTFL: LFW/web faces with 5 landmarks; test = 2,995 AFLW faces (the 'AFLW, MTFL split')",
    list_mtfl, layout=LAYOUT, required=[("training.txt",), ("testing.txt",)], default_protocol="resize",
    options={"unlabeled": True},
)


@hookimpl
def register_datasets():
    return [SPEC]
