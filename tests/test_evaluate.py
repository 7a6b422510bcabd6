import numpy as np
import pytest

from lmbench.config import ProtocolConfig
from lmbench.evaluate import evaluate_points, fit_linear, nme_percent, per_image_nme, predict_linear


def test_nme_hand_computed():
    gt = np.array([[[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]]])
    pred = gt.copy()
    pred[0, 2] += [3.0, 4.0]  # error 5 on one of three points, inter-ocular 10
    assert nme_percent(pred, gt) == pytest.approx(5 / 3 / 10 * 100)


def test_nme_uses_given_eye_indices():
    gt = np.array([[[0.0, 0.0], [10.0, 0.0], [0.0, 20.0]]])
    pred = gt + [1.0, 0.0]
    assert nme_percent(pred, gt, (0, 2)) == pytest.approx(1 / 20 * 100)


def test_nme_rejects_zero_interocular():
    gt = np.zeros((1, 2, 2))
    with pytest.raises(ValueError, match="inter-ocular"):
        per_image_nme(gt, gt)


def test_least_squares_recovers_an_affine_map_exactly():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 4))
    W = rng.normal(size=(4, 3))
    Y = X @ W + [1.0, -2.0, 0.5]
    fitted = fit_linear(X, Y, ridge_lambda=0.0, bias=True)
    assert np.allclose(fitted[:-1], W) and np.allclose(fitted[-1], [1.0, -2.0, 0.5])


def test_ridge_hand_computed_one_dimension():
    # x = [-1, 1], y = [-2, 2]: C = 2, penalty lam * max(C) = 0.5 * 2 = 1, w = 4 / (2 + 1).
    fitted = fit_linear(np.array([[-1.0], [1.0]]) + 3, np.array([[-2.0], [2.0]]), ridge_lambda=0.5, bias=True)
    assert fitted[0, 0] == pytest.approx(4 / 3)
    assert fitted[1, 0] == pytest.approx(0 - 3 * 4 / 3)
    assert predict_linear(fitted, np.array([[3.0]]))[0, 0] == pytest.approx(0.0)


def test_no_bias_goes_through_the_origin():
    fitted = fit_linear(np.array([[1.0], [2.0]]), np.array([[3.0], [5.0]]), ridge_lambda=0.0, bias=False)
    assert fitted[1, 0] == 0.0
    assert fitted[0, 0] == pytest.approx((1 * 3 + 2 * 5) / (1 + 4))


def test_evaluate_points_perfect_and_mean_shape():
    rng = np.random.default_rng(1)
    gt = rng.uniform(0, 64, size=(40, 5, 2))
    gt[:, 1] = gt[:, 0] + [12.0, 0.0]  # keep the eyes apart
    discovered = gt[:, [0, 1, 2, 3, 4, 0]] * 0.5 + 3  # an affine copy of the truth
    result = evaluate_points(discovered[:30], gt[:30], discovered[30:], gt[30:], ProtocolConfig(ridge_lambda=0.0), (0, 1))
    assert result["nme"] == pytest.approx(0.0, abs=1e-6)
    mean_shape = np.broadcast_to(gt[:30].mean(0), gt[30:].shape)
    assert result["nme_mean_shape"] == pytest.approx(nme_percent(mean_shape, gt[30:]))
    assert result["n_fit"] == 30 and result["n_test"] == 10


def test_unknown_regressor_is_an_error():
    x = np.ones((3, 1, 2))
    with pytest.raises(ValueError, match="unknown regressor"):
        evaluate_points(x, x, x, x, ProtocolConfig(regressor="magic"), (0, 1))


# -- regressors at the edges -----------------------------------------------------------------
from lmbench.data import MAFL_SCHEMA, DatasetSplits, ImageSplit  # noqa: E402
from lmbench.evaluate import (  # noqa: E402
    ProtocolMismatch,
    auc,
    ced_curve,
    check_test_crop,
    evaluate_protocols,
    from_space,
    subset_indices,
    sweep_sizes,
    to_space,
)


def test_ridge_with_one_image_predicts_that_image():
    fitted = fit_linear(np.array([[2.0, 3.0]]), np.array([[5.0, 7.0]]), ridge_lambda=1e-4, bias=True)
    assert np.allclose(fitted[:-1], 0.0)
    assert np.allclose(predict_linear(fitted, np.array([[9.0, -1.0]])), [[5.0, 7.0]])


def test_least_squares_with_fewer_images_than_features_is_minimum_norm():
    X = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    Y = np.array([[2.0], [3.0]])
    fitted = fit_linear(X, Y, ridge_lambda=0.0, bias=False)
    assert np.allclose(fitted[:-1, 0], [2.0, 3.0, 0.0])  # the unseen third feature gets no weight


# -- coordinate spaces ---------------------------------------------------------------------
def _space(name, **kw):
    return ProtocolConfig(coordinates=name, **kw)


@pytest.mark.parametrize("space, expected", [
    ("pixels", (16.0, 8.0)),
    ("heatmap", (8.0, 8.0)),  # 64 px wide -> 32, 32 px high -> 32
    ("normalized", (-0.5, -0.5)),
    ("unit_centered", (-0.25, -0.25)),
])
def test_coordinate_spaces_by_hand(space, expected):
    point = np.array([[[16.0, 8.0]]])  # (x, y) in an image of H=32, W=64
    converted = to_space(point, _space(space), (32, 64))
    assert np.allclose(converted[0, 0], expected)
    assert np.allclose(from_space(converted, _space(space), (32, 64)), point)


def test_original_coordinates_use_the_per_image_map():
    maps = np.array([[[2.0, 0.0, 10.0], [0.0, 2.0, 20.0]]])  # crop scaled x2 and shifted
    point = np.array([[[1.0, 1.0]]])
    original = to_space(point, _space("original"), (8, 8), maps)
    assert np.allclose(original, [[[12.0, 22.0]]])
    assert np.allclose(from_space(original, _space("original"), (8, 8), maps), point)
    with pytest.raises(ValueError, match="original"):
        to_space(point, _space("original"), (8, 8), None)


# -- metrics ---------------------------------------------------------------------------------
def test_ced_and_auc_by_hand():
    thresholds, fraction = ced_curve(np.array([0.01, 0.03, 0.2]))
    at = dict(zip(np.round(thresholds, 3), fraction))
    assert at[0.0] == 0 and at[1.0] == pytest.approx(1 / 3) and at[3.0] == pytest.approx(2 / 3) and at[20.0] == 1
    t, f = ced_curve(np.zeros(4))
    assert auc(t, f) == pytest.approx(1.0)
    t, f = ced_curve(np.full(4, 0.0501))  # every image at 5.01 %: half the area up to 10 %
    assert auc(t, f) == pytest.approx(0.5, abs=0.011)


def _faces(n, rng):
    gt = rng.uniform(10, 50, size=(n, 5, 2))
    gt[:, 1] = gt[:, 0] + [12.0, 0.0]
    return gt


def test_backward_error_is_zero_on_an_exact_affine_relation():
    rng = np.random.default_rng(2)
    gt = _faces(40, rng)
    A = np.array([[0.5, 0.1], [-0.2, 0.7]])
    discovered = gt[:, [4, 2, 0, 1, 3, 2]] @ A.T + [3.0, -1.0]
    result = evaluate_points(discovered[:30], gt[:30], discovered[30:], gt[30:], ProtocolConfig(ridge_lambda=0.0),
                             (0, 1), image_size=(64, 64))
    assert result["nme_backward"] == pytest.approx(0.0, abs=1e-6)


def test_backward_error_of_constant_points_is_zero_but_forward_is_the_mean_shape():
    rng = np.random.default_rng(3)
    gt = _faces(30, rng)
    constant = np.broadcast_to([[20.0, 20.0], [40.0, 30.0]], (30, 2, 2)).copy()
    result = evaluate_points(constant[:20], gt[:20], constant[20:], gt[20:], ProtocolConfig(), (0, 1), image_size=(64, 64))
    assert result["nme_backward"] == pytest.approx(0.0, abs=1e-9)  # GT -> a constant is learnt exactly
    assert result["nme"] == pytest.approx(result["nme_mean_shape"], rel=1e-6)  # a constant carries no information


def test_per_landmark_failure_rate_and_floors_are_consistent():
    rng = np.random.default_rng(4)
    gt = _faces(50, rng)
    discovered = gt[:, [0, 1, 2]] + rng.normal(0, 3, size=(50, 3, 2))
    result = evaluate_points(discovered[:35], gt[:35], discovered[35:], gt[35:], ProtocolConfig(), (0, 1),
                             image_size=(64, 64))
    assert result["per_landmark"].shape == (5,)
    assert result["per_landmark"].mean() == pytest.approx(result["nme"])
    assert result["failure_rate_10"] == pytest.approx((result["per_image"] > 0.1).mean() * 100)
    assert 0.0 <= result["auc_10"] <= 1.0


# -- the N sweep ------------------------------------------------------------------------------
def test_sweep_sizes_are_capped_and_end_with_all():
    assert sweep_sizes(ProtocolConfig(), 60) == [1, 5, 10, 60]
    assert sweep_sizes(ProtocolConfig(sweep_sizes=(100,)), 100) == [100]


def test_sweep_is_seeded_and_reproducible():
    rng = np.random.default_rng(5)
    gt = _faces(80, rng)
    discovered = gt[:, [0, 1, 3]] + rng.normal(0, 2, size=(80, 3, 2))

    def sweep(seed):
        result = evaluate_points(discovered[:60], gt[:60], discovered[60:], gt[60:],
                                 ProtocolConfig(seed=seed, repeats=3), (0, 1), image_size=(64, 64))
        return result, {row["n"]: row["values"] for row in result["sweep"]}

    first, a = sweep(0)
    _, b = sweep(0)
    _, c = sweep(1)
    assert a == b
    assert a[5] != c[5] and a[10] != c[10]
    assert not np.array_equal(subset_indices(60, 5, 0, 0), subset_indices(60, 5, 1, 0))
    assert a[60] == [pytest.approx(first["nme"])] and len(a[5]) == 3


# -- test crops -------------------------------------------------------------------------------
def _dataset(info):
    rng = np.random.default_rng(6)
    split = ImageSplit(np.zeros((4, 8, 8, 3), np.uint8), _faces(4, rng).astype(np.float32))
    return DatasetSplits("faces", MAFL_SCHEMA, split, split, split, info=info)


def test_a_crop_mismatch_is_refused_or_flagged():
    gt_box = _dataset({"protocol": {"name": "gt_box", "params": {"margin": 0.7}, "leaks_test_annotations": True}})
    with pytest.raises(ProtocolMismatch, match="test_crop='fixed'.*gt_box"):
        check_test_crop(gt_box, ProtocolConfig())
    with pytest.warns(UserWarning):
        assert "MISMATCH" in check_test_crop(gt_box, ProtocolConfig(), strict=False)
    assert check_test_crop(gt_box, ProtocolConfig(test_crop="gt_box")) == "gt_box:margin=0.7"
    assert check_test_crop(_dataset({}), ProtocolConfig(test_crop="gt_box")) == "none"


def test_evaluate_protocols_rebuilds_the_dataset_for_another_crop():
    fixed = _dataset({"protocol": {"name": "resize", "params": {}, "leaks_test_annotations": False}})
    cropped = _dataset({"protocol": {"name": "gt_box", "params": {}, "leaks_test_annotations": True}})
    asked = []

    def rebuild(crop):
        asked.append(crop)
        return cropped

    import torch

    def detect(images):
        return torch.rand(images.shape[0], 3, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1

    results = evaluate_protocols(detect, fixed, [ProtocolConfig(), ProtocolConfig(name="s", test_crop="gt_box")],
                                 rebuild=rebuild)
    assert asked == ["gt_box"]
    assert results["lmbench"]["test_crop_used"] == "resize" and results["s"]["test_crop_used"] == "gt_box"
    assert results["s"]["leaks_test_annotations"] and not results["lmbench"]["leaks_test_annotations"]


def test_point_stability_by_hand():
    from lmbench.evaluate import point_stability

    gt = np.array([[[10.0, 10.0]], [[12.0, 14.0]]])  # std x 1, y 2 -> 1.5
    points = np.array([[[10.0, 10.0], [1.0, 30.0], [5.0, 5.0]],
                       [[12.0, 14.0], [1.0, 30.0], [35.0, 45.0]]])  # spreads 1.5, 0, 17.5
    out = point_stability(points, gt, (64, 64))
    np.testing.assert_allclose(out["point_spread_px"], [1.5, 0.0, 17.5])
    assert out["gt_point_spread_px"] == 1.5
    assert out["wandering_points"] == 1  # 17.5 > 2 x 1.5
    # within 5 % of 64 px = 3.2 px of an edge: point 1 (x = 1) on both images
    np.testing.assert_allclose(out["near_border_fraction"], [0.0, 1.0, 0.0])
    assert out["border_points"] == 1
