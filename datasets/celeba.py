"""Aligned CelebA (Liu et al. 2015) with the MAFL splits (Zhang et al. 2016).

Two layouts are accepted under the root (reference section 5):

- plain: ``img_align_celeba/``, ``list_landmarks_align_celeba.txt``,
  ``list_eval_partition.txt`` (only for ``partition=train``), ``MAFL/training.txt`` and
  ``MAFL/testing.txt`` (or ``training.txt`` / ``testing.txt`` at the root);
- archive: ``Img/img_align_celeba[_hq]/``, ``Anno/list_landmarks_align_celeba.txt``,
  ``Eval/list_eval_partition.txt``, ``MAFL/``.

Splits: ``train`` = CelebA images for unsupervised training without the MAFL test images
(option ``exclude_mafl=both`` also drops the MAFL training images; ``partition=train`` /
``train+val`` keeps only those CelebA partitions); ``reg_train`` = MAFL training.txt;
``test`` = MAFL testing.txt. Landmarks come from the CelebA landmark file and are used
unchanged as continuous pixel coordinates.

``mafl`` is the same builder registered under a second name: identical splits and the same
cache, so that ``--dataset mafl`` reads like the papers' tables. Default protocol
``center_crop:fraction=0.8`` (Jakab et al.: centre square, 160 px, centre 128 px).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmbench.data import MAFL_SCHEMA
from lmbench.hookspecs import hookimpl
from lmbench.prepare import cached_dataset
from lmbench.sources import (
    DataError, Listing, Problems, Record, drop_missing, find_file, numbered_lines, parse_numbers, require_file,
)

IMAGE_DIRS = ("img_align_celeba", "Img/img_align_celeba", "Img/img_align_celeba_hq", "img_align_celeba_hq")
LANDMARKS = ("list_landmarks_align_celeba.txt", "Anno/list_landmarks_align_celeba.txt")
PARTITION = ("list_eval_partition.txt", "Eval/list_eval_partition.txt")
MAFL_TRAIN = ("MAFL/training.txt", "training.txt")
MAFL_TEST = ("MAFL/testing.txt", "testing.txt")
HEADER_START = "lefteye_x"
PARTITIONS = {"all": None, "train": {0}, "train+val": {0, 1}}
EXCLUDE = ("test", "both")

LAYOUT = "img_align_celeba/, list_landmarks_align_celeba.txt, MAFL/{training,testing}.txt (or Img/, Anno/, Eval/, MAFL/)"


def read_landmarks(path: Path, problems: Problems) -> dict[str, tuple[np.ndarray, str]]:
    """name -> (points [5,2], 'file:line') from list_landmarks_align_celeba.txt (count + header lines)."""
    lines = numbered_lines(path)
    first = next(lines, None)
    if first is None or not first[1].isdigit():
        raise DataError(f"{path}:{first[0] if first else 1}: expected the image count on the first line")
    header = next(lines, None)
    if header is None or not header[1].startswith(HEADER_START):
        raise DataError(f"{path}:{header[0] if header else 2}: expected the header line '{HEADER_START} ...'")
    table: dict[str, tuple[np.ndarray, str]] = {}
    for number, text in lines:
        where = f"{path}:{number}"
        fields = text.split()
        if len(fields) != 11:
            problems.report(where, f"malformed line: expected 'name x1 y1 ... x5 y5' (11 fields), got {len(fields)}")
            continue
        values = parse_numbers(fields[1:], where, problems)
        if values is not None:
            table[fields[0]] = (values.reshape(5, 2), where)
    if len(table) != int(first[1]) and not problems.skipped:
        problems.report(f"{path}:{first[0]}", f"the header announces {first[1]} images but {len(table)} are listed")
    return table


def read_names(path: Path) -> list[tuple[str, str]]:
    """(name, 'file:line') of the first column of a MAFL split file."""
    return [(text.split()[0], f"{path}:{number}") for number, text in numbered_lines(path)]


def read_partition(path: Path, problems: Problems) -> dict[str, int]:
    table = {}
    for number, text in numbered_lines(path):
        fields = text.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            problems.report(f"{path}:{number}", f"malformed line: expected 'name {{0,1,2}}', got {text!r}")
            continue
        table[fields[0]] = int(fields[1])
    return table


def image_dir(root: Path) -> Path:
    found = find_file(root, IMAGE_DIRS)
    if found is None or not found.is_dir():
        raise DataError(f"{root}: no CelebA image folder; looked for {', '.join(IMAGE_DIRS)}")
    return found


def list_celeba(root: Path, problems: Problems, exclude_mafl: str = "test", partition: str = "all") -> Listing:
    if exclude_mafl not in EXCLUDE:
        raise ValueError(f"celeba option exclude_mafl must be one of {', '.join(EXCLUDE)}, got {exclude_mafl!r}")
    if partition not in PARTITIONS:
        raise ValueError(f"celeba option partition must be one of {', '.join(PARTITIONS)}, got {partition!r}")
    images = image_dir(root)
    landmark_file = require_file(root, LANDMARKS, "CelebA landmark file")
    landmarks = read_landmarks(landmark_file, problems)
    mafl_train = read_names(require_file(root, MAFL_TRAIN, "MAFL training.txt"))
    mafl_test = read_names(require_file(root, MAFL_TEST, "MAFL testing.txt"))

    def records(names: list[tuple[str, str]]) -> list[Record]:
        out = []
        for name, where in names:
            if name not in landmarks:
                problems.report(where, f"{name} has no landmarks in {landmark_file}")
                continue
            out.append(Record(images / name, landmarks[name][0], where))
        return drop_missing(out, problems)

    excluded = {name for name, _ in mafl_test}
    if exclude_mafl == "both":
        excluded |= {name for name, _ in mafl_train}
    keep = PARTITIONS[partition]
    split_of = read_partition(require_file(root, PARTITION, "CelebA partition file"), problems) if keep else {}
    train_names = [(name, where) for name, (_, where) in landmarks.items()
                   if name not in excluded and (keep is None or split_of.get(name) in keep)]
    info = {"splits": f"train = CelebA ({partition}) minus MAFL {'train and test' if exclude_mafl == 'both' else 'test'}; "
                      "reg_train = MAFL training.txt; test = MAFL testing.txt",
            "layout": "archive" if images.parent.name == "Img" else "plain"}
    return Listing(MAFL_SCHEMA, {"train": records(train_names), "reg_train": records(mafl_train),
                                 "test": records(mafl_test)}, info)


REQUIRED = [IMAGE_DIRS, LANDMARKS, MAFL_TRAIN, MAFL_TEST]
OPTIONS = {"exclude_mafl": "test", "partition": "all"}
CELEBA = cached_dataset(
    "celeba", "aligned CelebA for unsupervised training (MAFL test excluded); regressor/test on MAFL",
    list_celeba, layout=LAYOUT, required=REQUIRED, default_protocol="center_crop:fraction=0.8", options=OPTIONS,
)
MAFL = cached_dataset(
    "mafl", "MAFL: the celeba dataset under its benchmark name (same splits, same cache)",
    list_celeba, layout=LAYOUT, required=REQUIRED, default_protocol="center_crop:fraction=0.8", options=OPTIONS,
    cache_name="celeba", default_root="~/data/celeba",
)


@hookimpl
def register_datasets():
    return [CELEBA, MAFL]
