"""What a real dataset adapter produces, and the parsing helpers the adapters share.

An adapter reads a dataset's original annotation files and returns a :class:`Listing`: per
split, a list of :class:`Record` (image path, points in *continuous pixel coordinates* of
the annotation frame, and where the record came from, e.g. ``training.txt:12``).
:mod:`lmbench.prepare` decodes, crops and caches the listing.

Bad inputs are reported through :class:`Problems`: by default the first one raises
:class:`DataError` naming the file and line; with ``skip_bad`` it is recorded and the
record dropped, so that the caller can count and save what was skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from lmbench.data import SPLITS, LandmarkSchema

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


class DataError(ValueError):
    """A missing or corrupt input, or a malformed annotation (the message names file and line)."""


@dataclass(frozen=True)
class Record:
    """One image of a split.

    ``points`` are (x, y) continuous pixel coordinates in a ``frame = (height, width)``;
    ``frame=None`` means the decoded image itself (otherwise points are rescaled to it).
    """

    path: Path
    points: np.ndarray | None = None
    where: str = ""
    frame: tuple[float, float] | None = None


@dataclass
class Problems:
    """Collects bad inputs; raises on the first one unless ``skip_bad``."""

    skip_bad: bool = False
    skipped: list[dict] = field(default_factory=list)

    def report(self, where: str, message: str) -> None:
        if not self.skip_bad:
            raise DataError(f"{where}: {message} (pass --skip-bad to skip bad inputs and record them)")
        self.skipped.append({"where": where, "problem": message})


@dataclass
class Listing:
    """A dataset's records per split, before decoding.

    ``box_points`` maps a record's points to the points the ``gt_box`` protocol crops around
    (e.g. 300-W's 68 points to their 5-point reduction); None means the points themselves.
    """

    schema: LandmarkSchema
    splits: dict[str, list[Record]]
    info: dict = field(default_factory=dict)
    box_points: Callable[[np.ndarray], np.ndarray] | None = None

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"listing lacks split(s) {', '.join(missing)}")


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines of a text file."""
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            text = line.strip()
            if text:
                yield number, text


def parse_numbers(fields: Sequence[str], where: str, problems: Problems) -> np.ndarray | None:
    """Floats from text fields, or None after reporting a malformed line."""
    try:
        values = np.array([float(f) for f in fields], dtype=np.float64)
    except ValueError:
        problems.report(where, f"malformed line: expected numbers, got {' '.join(fields)!r}")
        return None
    if not np.all(np.isfinite(values)):
        problems.report(where, "malformed line: non-finite coordinate")
        return None
    return values


def relative_image(root: Path, text: str) -> Path:
    """An image path from an annotation file: backslashes (Windows releases) become '/'."""
    return root / Path(*text.strip().replace("\\", "/").split("/"))


def find_file(root: Path, candidates: Iterable[str]) -> Path | None:
    """The first of ``candidates`` (paths relative to ``root``) that exists."""
    for candidate in candidates:
        path = root / candidate
        if path.exists():
            return path
    return None


def require_file(root: Path, candidates: Sequence[str], what: str) -> Path:
    """Like :func:`find_file`, but a clear error listing what was looked for."""
    found = find_file(root, candidates)
    if found is None:
        raise DataError(f"{root}: no {what}; looked for {', '.join(candidates)}")
    return found


def drop_missing(records: Iterable[Record], problems: Problems) -> list[Record]:
    """Records whose image file exists; each missing one is reported with its origin."""
    kept = []
    for record in records:
        if record.path.is_file():
            kept.append(record)
        else:
            problems.report(record.where or str(record.path), f"missing image {record.path}")
    return kept


def image_files(root: Path) -> list[Path]:
    """Every image under ``root``, recursively, in a stable (sorted) order; hidden entries skipped."""
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append(path)
    return sorted(found)


def has_image(root: Path) -> bool:
    """Whether ``root`` holds at least one image (stops at the first)."""
    for path in root.rglob("*"):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return True
    return False
