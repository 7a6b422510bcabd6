"""The embedded synthetic face dataset: determinism, splits, exact points, difficulty, cache."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from lmbench.data import MAFL_SCHEMA
from lmbench.datasets import synthetic as S

# Faces whose flat drawing is inspected at high resolution.
PROBE_INDICES = range(12)
PROBE_SIZE = 256


def nme(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean over points and images of ||pred - gt|| / inter-ocular distance, in percent."""
    iod = np.linalg.norm(gt[:, 0] - gt[:, 1], axis=-1)
    return float((np.linalg.norm(pred - gt, axis=-1) / iod[:, None]).mean() * 100)


def pixel(image: np.ndarray, point) -> np.ndarray:
    """The colour of the pixel containing continuous point ``(x, y)``."""
    x, y = np.floor(point).astype(int)
    return image[y, x].astype(int)


@pytest.fixture(autouse=True)
def forget_rendered_splits():
    S.clear_memory_cache()
    yield
    S.clear_memory_cache()


def test_render_shapes_and_dtypes():
    image, points = S.render_face(0, 0, 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert points.shape == (S.NUM_POINTS, 2) and points.dtype == np.float32
    assert np.isfinite(points).all()
    assert image.std() > 10  # not a blank canvas


def test_same_seed_and_index_give_identical_bytes():
    first, second = S.render_face(3, 17, 48), S.render_face(3, 17, 48)
    assert first[0].tobytes() == second[0].tobytes()
    assert first[1].tobytes() == second[1].tobytes()


def test_different_index_or_seed_gives_a_different_face():
    image, points = S.render_face(0, 5, 48)
    for other in (S.render_face(0, 6, 48), S.render_face(1, 5, 48)):
        assert not np.array_equal(image, other[0])
        assert not np.array_equal(points, other[1])


def test_rendering_order_and_batching_do_not_matter():
    indices = [9, 2, 40, 2_000_001]
    batch_images, batch_points = S.render_faces(7, indices, 32)
    reverse_images, reverse_points = S.render_faces(7, indices[::-1], 32)
    np.testing.assert_array_equal(batch_images, reverse_images[::-1])
    np.testing.assert_array_equal(batch_points, reverse_points[::-1])
    for row, index in enumerate(indices):
        image, points = S.render_face(7, index, 32)
        np.testing.assert_array_equal(batch_images[row], image)
        np.testing.assert_array_equal(batch_points[row], points)


def test_split_index_ranges_are_disjoint():
    ranges = sorted((S.split_indices(split, S.SPLIT_STRIDE) for split in ("train", "reg_train", "test")),
                    key=lambda r: r.start)
    assert all(first.stop <= second.start for first, second in zip(ranges, ranges[1:]))
    with pytest.raises(ValueError):
        S.split_indices("train", S.SPLIT_STRIDE + 1)


def test_build_returns_three_disjoint_annotated_splits():
    data = S.build_synthetic(image_size=32, seed=0, train_size=5, reg_train_size=4, test_size=3, cache=False)
    assert data.name == "synthetic" and data.schema == MAFL_SCHEMA
    for split, n in (("train", 5), ("reg_train", 4), ("test", 3)):
        part = data.split(split)
        assert part.images.shape == (n, 32, 32, 3) and part.images.dtype == np.uint8
        assert part.points.shape == (n, 5, 2) and part.points.dtype == np.float32
    assert data.info["render_version"] == S.RENDER_VERSION
    ranges = {"train": [0, 5], "reg_train": [10**6, 10**6 + 4], "test": [2 * 10**6, 2 * 10**6 + 3]}
    assert data.info["index_ranges"] == ranges
    np.testing.assert_array_equal(data.test.images[1], S.render_face(0, 2 * 10**6 + 1, 32)[0])
    flat = [data.split(split).images.reshape(len(data.split(split)), -1) for split in ("train", "reg_train", "test")]
    for a, b in ((flat[0], flat[1]), (flat[0], flat[2]), (flat[1], flat[2])):
        assert not (a[:, None] == b[None]).all(-1).any()  # no image shared between splits


def test_points_scale_exactly_with_resolution():
    """Points are analytic in continuous pixel coordinates: a 4x larger render has 4x the points."""
    for index in range(5):
        small, large = S.render_face(0, index, 64)[1], S.render_face(0, index, 256)[1]
        np.testing.assert_allclose(large, small * 4, atol=1e-3)


@lru_cache(maxsize=None)
def _probe(index: int):
    """Flat (unlit) high-resolution render of a face with its parameters and frame."""
    image, points = S.render_face(0, index, PROBE_SIZE, lighting=False)
    face, _, frame = S.sample_scene(S.face_rng(0, index), PROBE_SIZE)
    return image, points, face, frame


def test_eye_points_sit_on_the_pupils():
    checked = 0
    for index in PROBE_INDICES:
        image, points, face, _ = _probe(index)
        if face.glasses is not None and face.glasses.tint[3]:
            continue  # tinted lenses change the pupil colour
        for eye in points[:2]:
            # The pixel holding the point and its four neighbours are all pupil-black.
            for dx, dy in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
                assert pixel(image, eye + (dx * 0.9, dy * 0.9)).max() <= 40, (index, eye, dx, dy)
        checked += 1
    assert checked >= 8


def test_mouth_corners_sit_at_the_ends_of_the_lips():
    for index in PROBE_INDICES:
        image, points, face, frame = _probe(index)
        skin = np.array(face.head.skin)
        middle = frame.on_surface(np.array([[0.0, face.mouth.y]]), S.LIP_LIFT)[0]
        for corner in points[3:]:
            outward = (corner - middle) / np.linalg.norm(corner - middle)
            assert np.abs(pixel(image, corner + 3.0 * outward) - skin).max() <= 2, (index, "outside is skin")
            assert np.abs(pixel(image, corner - 2.0 * outward) - skin).max() > 10, (index, "inside is mouth")


def test_nose_tip_sits_between_the_nostrils():
    for index in PROBE_INDICES:
        image, points, face, frame = _probe(index)
        nose = face.nose
        centres = np.array([[-nose.nostril, nose.y + 0.6 * nose.tip], [nose.nostril, nose.y + 0.6 * nose.tip]])
        left, right = frame.on_surface(centres, 0.8 * nose.length)
        along = np.dot(points[2] - left, right - left) / np.dot(right - left, right - left)
        assert 0.15 < along < 0.85, (index, along)
        skin = np.array(face.head.skin)
        assert all(np.abs(pixel(image, centre) - skin).max() > 10 for centre in (left, right)), index


def test_mean_shape_is_far_from_good_and_faces_are_big_enough():
    _, reg_points = S.render_faces(0, S.split_indices("reg_train", 120), 64)
    _, test_points = S.render_faces(0, S.split_indices("test", 120), 64)
    mean_shape = reg_points.mean(0, keepdims=True)
    assert nme(np.broadcast_to(mean_shape, test_points.shape), test_points) >= 10.0
    iod = np.linalg.norm(test_points[:, 0] - test_points[:, 1], axis=-1)
    assert 12 <= iod.mean() <= 22 and iod.min() >= 8
    assert ((test_points > 0) & (test_points < 64)).all()
    # MAFL order with image left first.
    assert (test_points[:, 0, 0] < test_points[:, 1, 0]).all() and (test_points[:, 3, 0] < test_points[:, 4, 0]).all()


def test_cache_round_trip(tmp_path, monkeypatch):
    sizes = dict(train_size=3, reg_train_size=2, test_size=2)
    built = S.build_synthetic(root=tmp_path, image_size=24, render_seed=5, **sizes)
    expected = {tmp_path / f"v{S.RENDER_VERSION}-s5-24-{split}-{n}.npz" for split, n in
                (("train", 3), ("reg_train", 2), ("test", 2))}
    assert set(tmp_path.glob("*.npz")) == expected
    assert not list(tmp_path.glob("*.tmp"))

    S.clear_memory_cache()
    monkeypatch.setattr(S, "render_faces", lambda *a, **k: pytest.fail("should load from the disk cache"))
    loaded = S.build_synthetic(root=tmp_path, image_size=24, render_seed=5, **sizes)
    for split in ("train", "reg_train", "test"):
        np.testing.assert_array_equal(loaded.split(split).images, built.split(split).images)
        np.testing.assert_array_equal(loaded.split(split).points, built.split(split).points)
    again = S.build_synthetic(root=tmp_path, image_size=24, render_seed=5, **sizes)
    assert again.train.images is loaded.train.images  # served from memory


def test_default_cache_dir_follows_lmbench_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMBENCH_CACHE", str(tmp_path))
    assert S.default_cache_dir() == tmp_path / "synthetic"
    S.build_synthetic(image_size=16, train_size=1, reg_train_size=1, test_size=1)
    assert len(list((tmp_path / "synthetic").glob("*.npz"))) == 3


def test_render_version_is_part_of_the_cache_key(tmp_path, monkeypatch):
    old = S.cache_path(tmp_path, 0, 64, "test", 10)
    assert S.cache_path(tmp_path, 0, 64, "test", 10, version=S.RENDER_VERSION + 1) != old
    S.build_synthetic(root=tmp_path, image_size=16, train_size=1, reg_train_size=1, test_size=1)
    S.clear_memory_cache()
    monkeypatch.setattr(S, "RENDER_VERSION", S.RENDER_VERSION + 1)
    S.build_synthetic(root=tmp_path, image_size=16, train_size=1, reg_train_size=1, test_size=1)
    assert len(list(tmp_path.glob("*.npz"))) == 6


def test_corrupt_cache_file_is_rendered_again(tmp_path):
    path = S.cache_path(tmp_path, 0, 16, "test", 2)
    path.write_bytes(b"not an npz")
    data = S.build_synthetic(root=tmp_path, image_size=16, train_size=1, reg_train_size=1, test_size=2)
    np.testing.assert_array_equal(data.test.images[0], S.render_face(0, 2 * 10**6, 16)[0])
    assert S._read_cache(path, 16, 2) is not None


def test_the_run_seed_does_not_change_the_faces_but_render_seed_does():
    sizes = dict(image_size=24, train_size=2, reg_train_size=2, test_size=2, cache=False)
    a = S.build_synthetic(seed=0, **sizes)
    b = S.build_synthetic(seed=3, **sizes)
    c = S.build_synthetic(seed=0, render_seed=1, **sizes)
    np.testing.assert_array_equal(a.test.images, b.test.images)
    assert not np.array_equal(a.test.images, c.test.images)
    assert a.info["render_seed"] == 0 and c.info["render_seed"] == 1


def test_plain_background_keeps_faces_and_landmarks():
    cluttered, points = S.render_face(0, 3, 64)
    plain, plain_points = S.render_face(0, 3, 64, background="plain")
    np.testing.assert_array_equal(points, plain_points)
    assert not np.array_equal(cluttered, plain)
    for x, y in points.astype(int):  # the face itself is drawn and lit the same
        np.testing.assert_array_equal(cluttered[y, x], plain[y, x])
    with pytest.raises(ValueError, match="background must be one of"):
        S.build_synthetic(background="busy", cache=False)


def test_plain_background_has_its_own_cache_file(tmp_path):
    data = S.build_synthetic(tmp_path, image_size=16, train_size=2, reg_train_size=2, test_size=2, background="plain")
    assert data.info["background"] == "plain"
    assert sorted(p.name for p in tmp_path.iterdir())[0].endswith("-plain.npz")
