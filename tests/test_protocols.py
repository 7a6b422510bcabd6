import dataclasses
import json

import numpy as np
import pytest

from lmbench.config import ProtocolConfig
from lmbench.evaluate import evaluate_points
from lmbench.protocols import (
    PRESETS,
    crop_dataset_options,
    describe,
    get_protocol,
    leaks,
    protocol_names,
    validate_protocol,
)


def _faces(n, seed):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(10, 50, size=(n, 5, 2))
    gt[:, 1] = gt[:, 0] + [12.0, 0.0]
    return gt


def test_presets_follow_the_reference():
    assert all(validate_protocol(p) is None for p in PRESETS.values())
    lm, sanchez, jakab, zhang, mallis = (get_protocol(n) for n in ("lmbench", "sanchez", "jakab", "zhang", "mallis"))
    assert (lm.regressor, lm.ridge_lambda, lm.bias, lm.coordinates, lm.test_crop) == ("ridge", 1e-4, True, "pixels", "fixed")
    assert (sanchez.regressor, sanchez.bias, sanchez.coordinates, sanchez.heatmap_size, sanchez.test_crop) == (
        "ridge", True, "heatmap", 32, "gt_box")
    assert (jakab.regressor, jakab.bias, jakab.test_crop) == ("lstsq", False, "fixed")
    assert (zhang.regressor, zhang.bias, zhang.coordinates) == ("lstsq", False, "unit_centered")
    assert (mallis.ridge_lambda, mallis.coordinates, mallis.repeats) == (1e-3, "original", 10)
    assert leaks(sanchez) and not any(leaks(p) for n, p in PRESETS.items() if n != "sanchez")
    assert ProtocolConfig() == lm  # the default is the leak-free preset


def test_names_aliases_and_copies():
    assert get_protocol("li") == get_protocol("sanchez") and get_protocol("SANCHEZ").name == "sanchez"
    copy = get_protocol("zhang")
    copy.bias = True
    assert PRESETS["zhang"].bias is False
    with pytest.raises(ValueError, match="unknown protocol 'nope'.*lmbench"):
        get_protocol("nope")
    assert {"lmbench", "sanchez", "jakab", "zhang", "mallis", "li"} <= set(protocol_names())


@pytest.mark.parametrize("change, message", [
    ({"regressor": "magic"}, "regressor"), ({"coordinates": "feet"}, "coordinates"),
    ({"test_crop": "own"}, "test_crop"), ({"fit_split": "test"}, "both 'test'"), ({"repeats": 0}, "repeats"),
])
def test_invalid_settings_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        validate_protocol(dataclasses.replace(ProtocolConfig(), **change))


def test_describe_marks_the_leak():
    assert "leaks test annotations" in describe(get_protocol("sanchez"))
    assert "least squares, no bias" in describe(get_protocol("zhang"))


def test_crop_dataset_options():
    assert crop_dataset_options({"limit": 5}, "gt_box") == {"limit": 5, "protocol": "gt_box", "annotated_only": True}
    assert crop_dataset_options({"protocol": "gt_box", "limit": 5}, "fixed") == {"limit": 5}


def _score(protocol, discovered, gt, n_fit=30):
    return evaluate_points(discovered[:n_fit], gt[:n_fit], discovered[n_fit:], gt[n_fit:], protocol, (0, 1),
                           image_size=(64, 64))


def test_with_bias_the_uniformly_scaled_spaces_give_identical_numbers():
    gt = _faces(45, 0)
    discovered = gt[:, [0, 2, 3]] + np.random.default_rng(1).normal(0, 2, size=(45, 3, 2))
    numbers = {space: _score(ProtocolConfig(coordinates=space), discovered, gt)["nme"]
               for space in ("pixels", "heatmap", "normalized", "unit_centered")}
    assert np.allclose(list(numbers.values()), numbers["pixels"], rtol=1e-9)


def test_without_bias_the_origin_of_the_space_matters():
    rng = np.random.default_rng(2)
    discovered = rng.uniform(10, 54, size=(45, 3, 2))
    M = rng.normal(0, 0.5, size=(6, 10))
    # the annotations are a linear function of the discovered points about the image centre (32, 32)
    gt = ((discovered - 32.0).reshape(45, 6) @ M).reshape(45, 5, 2) + 32.0
    assert _score(get_protocol("zhang"), discovered, gt)["nme"] == pytest.approx(0.0, abs=1e-8)  # centred space
    assert _score(get_protocol("lmbench"), discovered, gt)["nme"] < 0.1  # a bias absorbs the origin (ridge shrinks a little)
    assert _score(get_protocol("jakab"), discovered, gt)["nme"] > 1.0  # pixels, no bias: the offset is lost


def test_sanchez_sweep_with_one_image_predicts_that_shape_by_hand():
    gt = _faces(12, 3)
    discovered = gt[:, :3] + 1.0
    protocol = dataclasses.replace(get_protocol("sanchez"), sweep_sizes=(1,), repeats=2)
    result = _score(protocol, discovered, gt, n_fit=8)
    one = result["sweep"][0]
    assert one["n"] == 1 and one["repeats"] == 2
    from lmbench.evaluate import subset_indices

    for repeat, value in enumerate(one["values"]):
        shape = gt[subset_indices(8, 1, protocol.seed, repeat)[0]]
        test = gt[8:]
        iod = np.linalg.norm(test[:, 0] - test[:, 1], axis=-1)
        expected = (np.linalg.norm(test - shape, axis=-1).mean(1) / iod).mean() * 100
        assert value == pytest.approx(expected)


def test_mallis_needs_a_map_to_the_original_images():
    gt = _faces(20, 4)
    with pytest.raises(ValueError, match="original"):
        _score(get_protocol("mallis"), gt[:, :3], gt, n_fit=10)
    maps = np.broadcast_to(np.array([[3.0, 0.0, 5.0], [0.0, 3.0, 7.0]]), (20, 2, 3))
    result = evaluate_points(gt[:10, :3], gt[:10], gt[10:, :3], gt[10:], get_protocol("mallis"), (0, 1),
                             image_size=(64, 64), fit_to_original=maps[:10], test_to_original=maps[10:])
    assert len(result["sweep"][0]["values"]) == 10  # ten seeded repeats


def test_eval_adds_protocols_side_by_side(test_plugin, tmp_path):
    from lmbench.config import RunConfig
    from lmbench.runner import reevaluate, run

    run_dir = tmp_path / "run"
    config = RunConfig(method="tiny", K=3, dataset="blobs", steps=2, batch_size=4, image_size=32, device="cpu")
    metrics = run(config, run_dir)
    assert set(metrics["nme_by_protocol"]) == {"lmbench"} and "nme_untrained" in metrics
    again = reevaluate(run_dir, device="cpu", protocols=["sanchez", "zhang"])
    assert set(again["nme_by_protocol"]) == {"lmbench", "sanchez", "zhang"}
    assert again["nme"] == pytest.approx(metrics["nme"])  # the run's own protocol stays at the top level
    assert again["nme_by_protocol"]["sanchez"]["protocol"]["test_crop"] == "gt_box"
    assert again["nme_by_protocol"]["sanchez"]["test_crop_used"] == "none"  # blobs has no crop step
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert set(evaluation["protocols"]) == {"lmbench", "sanchez", "zhang"}
    assert (run_dir / "evaluation" / "zhang" / "sweep.csv").read_text().startswith("n,all,repeat,seed,nme")
    points = (run_dir / "evaluation" / "lmbench" / "points.csv").read_text().splitlines()
    assert points[0] == "point,spread_px,near_border_fraction" and len(points) == 1 + 3  # K = 3
    assert {"wandering_points", "border_points", "gt_point_spread_px"} <= set(metrics)


def test_mallis_runs_where_the_dataset_knows_its_originals(test_plugin, tmp_path):
    """Synthetic faces are rendered at the input size, so original-image pixels are input pixels."""
    from lmbench.config import RunConfig
    from lmbench.protocols import get_protocol
    from lmbench.runner import run

    protocol = get_protocol("mallis")
    protocol.sweep_sizes, protocol.repeats = (2,), 2
    config = RunConfig(method="tiny", dataset="synthetic", K=3, steps=2, batch_size=4, image_size=32,
                       dataset_options={"train_size": 8, "reg_train_size": 12, "test_size": 4}, protocol=protocol)
    metrics = run(config, tmp_path / "run")
    assert metrics["protocol"]["coordinates"] == "original" and metrics["nme"] > 0


def test_sanchez_evaluation_of_a_run_with_unlabeled_training_images(test_plugin, tmp_path):
    """The gt_box crop cannot cut unlabeled images; evaluation reads only the annotated splits."""
    from dataset_fixtures import write_mtfl

    from lmbench.config import RunConfig
    from lmbench.runner import reevaluate, run

    root = write_mtfl(tmp_path / "mtfl")
    run_dir = tmp_path / "run"
    config = RunConfig(method="tiny", K=3, dataset="mtfl", data_root=str(root), steps=2, batch_size=2,
                       image_size=32, device="cpu")
    config.protocol.floors = False
    run(config, run_dir)
    with pytest.warns(UserWarning, match="leaks test annotations"):
        again = reevaluate(run_dir, device="cpu", protocols=["lmbench", "sanchez"])
    assert again["nme_by_protocol"]["sanchez"]["test_crop_used"].startswith("gt_box")
    assert np.isfinite(again["nme_by_protocol"]["sanchez"]["nme"])
    assert again["nme_by_protocol"]["lmbench"]["nme"] == pytest.approx(again["nme"])
