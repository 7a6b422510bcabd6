"""The real dataset adapters, on tiny fixtures written in each original format."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED
from dataset_fixtures import (
    celeba_points, face68, pts_text, write_300w, write_aflw, write_celeba, write_image, write_mtfl,
)

from lmbench import registry
from lmbench.datasets import aflw, celeba, folder, mtfl, w300
from lmbench.evaluate import evaluate
from lmbench.config import ProtocolConfig
from lmbench.sources import Problems

QUIET = {"progress": False}


def build(spec, root, size=32, **options):
    return spec.builder(root=root, image_size=size, **QUIET, **options)


def test_registered_and_found(tmp_path, fresh_plugins):
    names = registry.datasets()
    for name in ("celeba", "mafl", "aflw", "mtfl", "300w", "folder"):
        assert name in names and names[name].layout
    root = write_mtfl(tmp_path / "mtfl")
    assert names["mtfl"].find_root(root) == root
    assert names["mtfl"].find_root(tmp_path) is None
    assert not names["folder"].annotated


def test_mtfl_backslashes_leading_spaces_and_unlabeled(tmp_path):
    root = write_mtfl(tmp_path)
    data = build(mtfl.SPEC, root, size=80)
    assert (len(data.train), len(data.reg_train), len(data.test)) == (5, 3, 2)
    assert data.train.points is None  # unlabeled images make the train split unannotated
    assert data.reg_train.sources[0] == "lfw_5590/Person_0000.jpg"
    # 40x40 images resized to 80: x2; order x1..x5 then y1..y5.
    np.testing.assert_allclose(data.reg_train.points[1, :2], [[22, 28], [60, 30]])
    assert isinstance(data.reg_train.images, np.memmap)
    assert data.info["protocol"]["name"] == "resize" and not data.info["protocol"]["leaks_test_annotations"]
    no_extra = build(mtfl.SPEC, root, size=80, unlabeled=False)
    assert len(no_extra.train) == 3 and no_extra.train.points is not None


def test_points_follow_pixels_exactly(tmp_path):
    """A white pixel at (row 10, col 20) is annotated (20.5, 10.5): after any protocol the spot's
    centroid must sit on the mapped point."""
    write_image(tmp_path / "a.png", 40, 40, colour=(0, 0, 0), spot=(10, 20))
    line = "a.png 20.5 0 0 0 0 10.5 0 0 0 0\n"
    (tmp_path / "training.txt").write_text(line)
    (tmp_path / "testing.txt").write_text(line)
    for protocol in ("resize", "center_crop:fraction=0.8", "gt_box:margin=0.7"):
        data = build(mtfl.SPEC, tmp_path, size=64, protocol=protocol)
        image = data.test.images[0].astype(np.float64).sum(-1)
        image = np.clip(image - np.median(image), 0, None)
        rows, cols = np.mgrid[0:64, 0:64]
        centroid = [(image * (cols + 0.5)).sum() / image.sum(), (image * (rows + 0.5)).sum() / image.sum()]
        np.testing.assert_allclose(centroid, data.test.points[0, 0], atol=0.15, err_msg=protocol)


def test_gt_box_is_flagged(tmp_path):
    root = write_mtfl(tmp_path)
    with pytest.warns(UserWarning, match="leaks test annotations"):
        data = build(mtfl.SPEC, root, protocol="gt_box", unlabeled=False)
    assert data.info["protocol"]["leaks_test_annotations"] and data.info["protocol"]["params"] == {"margin": 0.7}
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="needs landmarks for every image"):
        build(mtfl.SPEC, root, protocol="gt_box")
    # annotated_only leaves the unlabeled images out instead (what evaluation under gt_box does)
    with pytest.warns(UserWarning, match="leaks test annotations"):
        kept = build(mtfl.SPEC, root, protocol="gt_box", annotated_only=True)
    assert len(kept.train) == len(data.train) and kept.train.points is not None


@pytest.mark.parametrize("archive", [False, True])
def test_celeba_layouts_and_mafl_exclusion(tmp_path, archive):
    root = write_celeba(tmp_path, archive=archive)
    data = build(celeba.CELEBA, root, size=64)
    assert data.info["layout"] == ("archive" if archive else "plain")
    assert [s.split("/")[-1] for s in data.reg_train.sources] == ["000001.jpg", "000002.jpg"]
    assert [s.split("/")[-1] for s in data.test.sources] == ["000003.jpg", "000004.jpg"]
    train = [s.split("/")[-1] for s in data.train.sources]
    assert train == ["000001.jpg", "000002.jpg", "000005.jpg", "000006.jpg"]  # MAFL test excluded
    # Jakab crop: centre square 178 of 178x218 (y from 20), centre 0.8 -> side 142.4 from (17.8, 37.8).
    x, y = celeba_points(2)[:2]
    np.testing.assert_allclose(data.test.points[0, 0], [(x - 17.8) * 64 / 142.4, (y - 37.8) * 64 / 142.4], rtol=1e-5)
    both = build(celeba.CELEBA, root, size=64, exclude_mafl="both")
    assert [s.split("/")[-1] for s in both.train.sources] == ["000005.jpg", "000006.jpg"]
    train_only = build(celeba.CELEBA, root, size=64, partition="train")  # partitions i % 3: 0 for 1 and 4
    assert [s.split("/")[-1] for s in train_only.train.sources] == ["000001.jpg"]


def test_mafl_shares_the_celeba_splits(tmp_path):
    root = write_celeba(tmp_path)
    a, b = build(celeba.CELEBA, root), build(celeba.MAFL, root)
    assert b.info["cache"] == a.info["cache"]
    np.testing.assert_array_equal(a.test.points, b.test.points)


def test_celeba_header_errors_name_file_and_line(tmp_path):
    root = write_celeba(tmp_path)
    landmark_file = root / "list_landmarks_align_celeba.txt"
    lines = landmark_file.read_text().splitlines()
    landmark_file.write_text("\n".join([lines[0]] + lines[2:]) + "\n")  # header line missing
    with pytest.raises(ValueError, match=r"list_landmarks_align_celeba.txt:2: expected the header"):
        build(celeba.CELEBA, root)


def test_aflw_swaps_y_x_and_rescales_from_hw(tmp_path):
    root = write_aflw(tmp_path, image_size=(50, 40), hw=(100, 80))
    data = build(aflw.SPEC, root, size=40)
    assert (len(data.train), len(data.reg_train), len(data.test)) == (3, 3, 2)
    assert data.train is data.reg_train  # one list, stored once
    # (x, y) = (20, 30) in a 80x100 frame -> 40x50 image (x0.5) -> 40x40 output (y x0.8).
    np.testing.assert_allclose(data.test.points[0, 0], [10.0, 12.0], rtol=1e-6)
    np.testing.assert_allclose(data.test.points[0, 1], [30.0, 12.0], rtol=1e-6)


def test_300w_pts_one_based_and_five_point_reduction(tmp_path):
    root = write_300w(tmp_path)
    data = build(w300.SPEC, root, size=60)
    assert data.schema.num_points == 68 and data.schema.eye_indices == (36, 45)
    assert (len(data.train), len(data.test)) == (3, 3)
    np.testing.assert_allclose(data.train.points[0], face68(0) - 0.5, atol=1e-3)  # MATLAB 1-based -> continuous
    five = build(w300.SPEC, root, size=60, points=5)
    assert five.schema.eye_indices == (0, 1) and five.train.points.shape[1:] == (5, 2)
    pts = face68(0) - 0.5
    expected = [pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]]
    np.testing.assert_allclose(five.train.points[0], expected, atol=1e-3)
    challenging = build(w300.SPEC, root, size=60, test_set="challenging")
    assert [s for s in challenging.test.sources] == ["ibug/img5.jpg"]


def test_300w_flat_folder_with_split_file(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"f{i}.png", 60, 60).with_suffix(".pts").write_text(pts_text(face68(i)))
    (tmp_path / "split.txt").write_text("train f0.png\ntrain f1.png\ntest f2.png\n")
    assert w300.SPEC.is_present(tmp_path)
    data = build(w300.SPEC, tmp_path, size=60)
    assert (len(data.train), len(data.test)) == (2, 1)


def test_300w_malformed_pts_names_file_and_line(tmp_path):
    problems = Problems()
    path = tmp_path / "x.pts"
    text = pts_text(face68()).splitlines()
    text[5] = "12.0 oops"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"x.pts:6: malformed point line"):
        w300.read_pts(path, problems)


def test_folder_recursive_and_not_evaluable(tmp_path):
    write_image(tmp_path / "a.jpg", 30, 50)
    write_image(tmp_path / "sub" / "b.png", 50, 30)
    (tmp_path / "notes.txt").write_text("not an image")
    data = build(folder.SPEC, tmp_path)
    assert len(data.train) == 2 and data.train.sources == ["a.jpg", "sub/b.png"]
    assert len(data.reg_train) == 0 and data.reg_train.points is None and len(data.test) == 0
    with pytest.raises(ValueError, match="has no annotations"):
        evaluate(lambda x: None, data, ProtocolConfig())


MTFL80 = SHARED / "data" / "mtfl80"


@pytest.mark.skipif(not (MTFL80 / "training.txt").exists(), reason=f"real MTFL copy not found at {MTFL80}")
def test_real_mtfl_copy():
    problems = Problems()
    listing = mtfl.list_mtfl(MTFL80, problems)
    assert not problems.skipped
    assert (len(listing.splits["reg_train"]), len(listing.splits["test"]), listing.info["n_unlabeled"]) == (4151, 2995, 5849)
    assert len(listing.splits["train"]) == 4151 + 5849
    for split, median_iod in (("reg_train", (10, 17)), ("test", (18, 30))):
        points = np.stack([r.points for r in listing.splits[split]])
        assert points.min() >= 0 and points.max() <= 80
        iod = np.linalg.norm(points[:, 0] - points[:, 1], axis=-1)
        assert iod.min() > 2 and median_iod[0] < np.median(iod) < median_iod[1]
    data = build(mtfl.SPEC, MTFL80, size=64, limit=40)
    assert data.test.points.max() <= 64 and data.test.images.shape == (40, 64, 64, 3)


@pytest.mark.parametrize("protocol", ["resize", "gt_box"])
def test_to_original_maps_inputs_back_to_the_annotation_frame(tmp_path, protocol):
    """The stored per-image map takes input pixels to the annotation frame's pixels (AFLW's hw frame)."""
    from lmbench.evaluate import _affine

    root = write_aflw(tmp_path, image_size=(50, 40), hw=(100, 80))
    data = build(aflw.SPEC, root, size=40, protocol=protocol)
    xy = np.array([[20, 30], [60, 30], [40, 50], [25, 70], [55, 70]], np.float64)
    for split in (data.reg_train, data.test):
        assert split.to_original.shape == (len(split), 2, 3)
        np.testing.assert_allclose(_affine(split.points.astype(np.float64), split.to_original),
                                   np.broadcast_to(xy, split.points.shape), atol=1e-4)


def test_mafl_and_celeba_find_the_same_folder_under_lmbench_data(tmp_path, monkeypatch, fresh_plugins):
    write_celeba(tmp_path / "data" / "celeba")
    monkeypatch.setenv("LMBENCH_DATA", str(tmp_path / "data"))
    names = registry.datasets()
    assert names["mafl"].find_root() == names["celeba"].find_root() == tmp_path / "data" / "celeba"
    assert names["mafl"].default_root == "~/data/celeba"
