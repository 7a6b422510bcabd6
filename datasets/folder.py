"""``folder``: any directory of images (searched recursively), for unsupervised training only.

There are no annotations: ``reg_train`` and ``test`` are empty splits without points, so
``lmbench run`` trains, writes the checkpoint and records that nothing was evaluated;
``lmbench eval RUN --dataset NAME`` then scores the checkpoint on an annotated dataset.
Default protocol ``center_crop`` (the central square of each image).
"""

from __future__ import annotations

from pathlib import Path

from lmbench.data import LandmarkSchema
from lmbench.hookspecs import hookimpl
from lmbench.prepare import cached_dataset
from lmbench.sources import DataError, Listing, Problems, Record, has_image, image_files

NO_POINTS = LandmarkSchema(names=())


def list_folder(root: Path, problems: Problems) -> Listing:
    images = image_files(root)
    if not images:
        raise DataError(f"{root}: no images found (searched recursively for common image extensions)")
    train = [Record(path, None, str(path)) for path in images]
    info = {"splits": "train = every image under the root; reg_train and test are empty (no annotations)",
            "annotated": False}
    return Listing(NO_POINTS, {"train": train, "reg_train": [], "test": []}, info)


SPEC = cached_dataset(
    "folder", "any folder of images, recursively (unsupervised training only: nothing to evaluate on)",
    list_folder, layout="any images under the root, in any subfolders", required=[],
    default_protocol="center_crop", annotated=False, present=lambda root: has_image(Path(root)),
)


@hookimpl
def register_datasets():
    return [SPEC]
