import numpy as np
import pytest
from PIL import Image

from lmbench.datasets import mpii
from mpii_fixture import SCALE, write_mpii_fixture


@pytest.fixture
def root(tmp_path):
    mpii._CACHE.clear()
    return write_mpii_fixture(tmp_path / "mpii")


def test_reads_joints_visibility_and_skips_persons_without_joints(root):
    persons, skipped = mpii.read_annotations(root / mpii.MAT_FILE)
    assert len(persons) == 6  # the img_train == 0 image and the joint-less person are left out
    assert skipped == {"no_joints": 1, "no_position": 0}
    first = persons[0]
    assert first.image == "00000.jpg" and first.scale == SCALE
    np.testing.assert_allclose(first.joints[9], (79.5, 29.5))  # 1-based (80, 30) -> continuous
    np.testing.assert_allclose(first.joints[12], (64.5, 54.5))
    assert np.isnan(first.joints[0]).all()  # not annotated: kept as NaN, not dropped
    # is_visible: 1 -> True, "0" -> False, empty -> True (annotated, flag unknown), missing -> False
    assert first.visible[9] and not first.visible[12] and first.visible[3] and not first.visible[0]


def test_img_train_split_by_image_is_seeded_and_disjoint(root):
    data = mpii.build_mpii(root, image_size=64, val_fraction=0.5)
    sources = {name: {s.split("#")[0] for s in data.split(name).sources} for name in ("train", "reg_train", "test")}
    assert data.info["persons"] == {"train": 3, "reg_train": 1, "test": 2}
    assert not (sources["train"] & sources["reg_train"]) and not (sources["train"] & sources["test"])
    assert not (sources["reg_train"] & sources["test"])
    assert "test0.jpg" not in set().union(*sources.values())
    mpii._CACHE.clear()
    again = mpii.build_mpii(root, image_size=64, seed=5, val_fraction=0.5)  # the run seed does not move the split
    assert {s for s in again.test.sources} == set(data.test.sources)
    assert data.schema.num_points == 16 and data.schema.eye_indices == (8, 9)


def test_joints_land_on_their_blobs_in_the_crop(root):
    data = mpii.build_mpii(root, image_size=64, val_fraction=0.5)
    split = data.train
    assert split.images.shape == (3, 64, 64, 3) and split.points.shape == (3, 16, 2)
    for image, points, annotated in zip(split.images, split.points, split.annotated):
        assert annotated.sum() == 4
        for x, y in points[annotated]:
            row, col = int(y), int(x)
            patch = image[row - 3 : row + 4, col - 3 : col + 4, 0].astype(float)
            peak_row, peak_col = np.unravel_index(patch.argmax(), patch.shape)
            # the brightest pixel near the joint is the pixel that contains it (blob std ~1.3 crop px)
            assert abs(peak_row - 3 + row + 0.5 - y) <= 1.0 and abs(peak_col - 3 + col + 0.5 - x) <= 1.0
            assert patch.max() > 120
        np.testing.assert_allclose(points[~annotated], 32.0)  # unannotated joints sit at the crop centre


def test_crop_mapping_is_exact_for_a_known_box():
    image = Image.fromarray(np.zeros((40, 40, 3), np.uint8))
    image.putpixel((30, 10), (255, 255, 255))  # pixel (row 10, col 30): centre (30.5, 10.5)
    crop = mpii.crop_image(image, 20.0, 0.0, 20.0, 20)  # 1:1 box [20, 40] x [0, 20]
    assert crop[10, 10, 0] == 255 and crop.sum() == 255 * 3
    np.testing.assert_allclose(mpii.to_crop(np.array([30.5, 10.5]), 20.0, 0.0, 20.0, 20), (10.5, 10.5))
    np.testing.assert_allclose(mpii.to_crop(np.array([30.0, 10.0]), 20.0, 0.0, 20.0, 10), (5.0, 5.0))
    outside = mpii.crop_image(image, -10.0, -10.0, 20.0, 20)  # beyond the photo: black padding
    assert outside.shape == (20, 20, 3) and outside.max() == 0


def test_head_boxes_follow_the_crop(root):
    data = mpii.build_mpii(root, image_size=64, val_fraction=0.5)
    side = 200 * SCALE * 1.25
    # head box 20 x 20 photo px -> 20 * 64 / side crop px
    widths = data.train.head_boxes[:, 2] - data.train.head_boxes[:, 0]
    np.testing.assert_allclose(widths, 20 * 64 / side, rtol=1e-5)


def test_missing_mat_and_missing_image_are_named(tmp_path, root):
    mpii._CACHE.clear()
    with pytest.raises(FileNotFoundError, match="mpii_human_pose_v1_u12_1.mat"):
        mpii.build_mpii(tmp_path / "nowhere", image_size=32)
    (root / "images" / "00003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="00003.jpg"):
        mpii.build_mpii(root, image_size=32, val_fraction=0.5)
    assert mpii.is_present(root) and not mpii.is_present(tmp_path)


def test_registered_as_a_plugin(fresh_plugins, root):
    from lmbench import registry

    spec = registry.get_dataset("mpii")
    assert not spec.embedded and spec.find_root(root) == root


def test_evaluation_persons_need_the_head_segment(tmp_path):
    from mpii_fixture import default_people

    mpii._CACHE.clear()
    people = default_people()
    for _, _, rects in people:
        for rect in rects:
            if isinstance(rect["annopoints"], dict):
                points = rect["annopoints"]["point"]
                rect["annopoints"]["point"] = points[:, [p["id"] != 9 for p in points[0]]]
    root = write_mpii_fixture(tmp_path / "mpii", people)
    data = mpii.build_mpii(root, image_size=32, val_fraction=0.5)
    assert len(data.train) == 3 and len(data.reg_train) == 0 and len(data.test) == 0
    assert data.info["skipped_eval_without_head_segment"] == 3


def test_to_original_maps_crop_joints_back_to_the_photo(root):
    mpii._CACHE.clear()
    persons, _ = mpii.read_annotations(root / mpii.MAT_FILE)
    data = mpii.build_mpii(root, image_size=64, val_fraction=0.5)
    split = data.train
    by_source = {f"{p.image}#{p.centre[0] + 0.5:.0f},{p.centre[1] + 0.5:.0f}": p for p in persons}
    for points, annotated, affine, source in zip(split.points, split.annotated, split.to_original, split.sources):
        photo = points @ affine[:, :2].T + affine[:, 2]
        np.testing.assert_allclose(photo[annotated], by_source[source].joints[annotated], atol=1e-3)
    assert split.subset(np.array([1])).to_original.shape == (1, 2, 3)
