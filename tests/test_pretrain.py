import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lmbench import atomic
from lmbench.config import RunConfig
from lmbench.data import ImageSplit, LandmarkSchema
from lmbench.datasets import mpii
from lmbench.pretrain import HeatmapPretraining, evaluate_pretraining, head_sizes, heatmap_peaks, pck, training_split
from mpii_fixture import write_mpii_fixture

SMALL = ["--image-size", "32", "--channels", "16", "--depth", "1", "--batch-size", "2", "--device", "cpu",
         "--set", "detector.stem_channels=8"]


def test_head_size_is_0_6_of_the_box_diagonal():
    np.testing.assert_allclose(head_sizes(np.array([[0, 0, 30, 40], [10, 10, 13, 14]])), [30.0, 3.0])


def test_pckh_against_hand_computed_values():
    # head boxes: diagonal 50 -> head size 30 -> threshold 15 px; diagonal 5 -> 3 -> 1.5 px
    boxes = np.array([[0, 0, 30, 40], [0, 0, 3, 4]], float)
    gt = np.zeros((2, 3, 2))
    pred = np.array([
        [[15, 0], [9, 12.01], [0, 20]],  # distances 15 (correct: <=), 15.008 (wrong), 20 (wrong)
        [[1, 1], [0, 1.5], [0, 0]],  # 1.414 (correct), 1.5 (correct), 0 but unannotated
    ])
    annotated = np.array([[True, True, True], [True, True, False]])
    result = pck(pred, gt, head_sizes(boxes), annotated, 0.5, names=["a", "b", "c"])
    assert result["total"] == pytest.approx(100 * 3 / 5)
    assert result["per_point"] == {"a": 100.0, "b": 50.0, "c": 0.0}
    with pytest.raises(ValueError, match="no annotated point"):
        pck(pred, gt, np.array([0.0, np.nan]))


def test_heatmap_peaks_find_the_quarter_pixel_refined_maximum():
    maps = torch.zeros(1, 2, 8, 8)
    maps[0, 0, 2, 5] = 1.0  # isolated peak: centre of pixel (row 2, col 5)
    maps[0, 1, 6, 1], maps[0, 1, 6, 2] = 1.0, 0.5  # right neighbour higher: +0.25 in x
    points = heatmap_peaks(maps)[0]
    torch.testing.assert_close(points[0], torch.tensor([2 * 5.5 / 8 - 1, 2 * 2.5 / 8 - 1]))
    torch.testing.assert_close(points[1], torch.tensor([2 * 1.75 / 8 - 1, 2 * 6.5 / 8 - 1]))


def test_loss_masks_unannotated_points_and_gives_zero_for_perfect_maps():
    config = RunConfig(K=2)
    config.detector.channels, config.detector.depth, config.detector.stem_channels = 16, 1, 8
    task = HeatmapPretraining(config, sigma=1.0, augment=False)
    points = torch.tensor([[[0.1, -0.2], [float("nan"), float("nan")]]])
    from lmbench.nn.bottleneck import render_gaussians

    target = render_gaussians(torch.tensor([[[0.1, -0.2], [0.0, 0.0]]]), (8, 8), 1.0)
    task.detector.forward = lambda images: torch.stack([target[:, 0], target[:, 1] + 5.0], 1)  # map 2 is far off
    loss = task.losses(torch.zeros(1, 3, 32, 32), torch.Generator().manual_seed(0), points)["heatmap_mse"]
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_training_split_sets_unannotated_points_to_nan():
    split = mpii.PoseSplit(np.zeros((1, 8, 8, 3), np.uint8), np.ones((1, 2, 2), np.float32),
                           annotated=np.array([[True, False]]))
    points = training_split(split).points
    assert np.isfinite(points[0, 0]).all() and np.isnan(points[0, 1]).all()


def test_evaluate_uses_pck_of_the_schema_pair_without_head_boxes():
    config = RunConfig(K=2)
    config.detector.channels, config.detector.depth, config.detector.stem_channels = 16, 1, 8
    task = HeatmapPretraining(config, augment=False)
    task.detect = lambda images: torch.tensor([[[-0.5, 0.0], [0.5, 0.0]]]).expand(images.shape[0], 2, 2)
    # 16 px images: detections at pixels (4, 8) and (12, 8); truth (4, 8) and (12, 12); pair distance 8.94
    split = ImageSplit(np.zeros((2, 16, 16, 3), np.uint8), np.array([[[4, 8], [12, 12]]] * 2, np.float32))
    metrics = evaluate_pretraining(task, split, LandmarkSchema(("a", "b")), "cpu")
    assert metrics["pck"] == pytest.approx(100.0)  # 4 px <= 0.5 x 8.94
    assert metrics["nme"] == pytest.approx(100 * (0 + 4) / 2 / np.hypot(8, 4), rel=1e-5)


@pytest.fixture
def pretrain_cli(fresh_plugins):
    from lmbench.cli import _add_plugin_commands, cli

    _add_plugin_commands()
    return cli


def test_pretrain_command_on_the_mpii_fixture_writes_a_run_directory(tmp_path, pretrain_cli):
    mpii._CACHE.clear()
    root = write_mpii_fixture(tmp_path / "mpii")
    out = tmp_path / "pre"
    result = CliRunner().invoke(pretrain_cli, ["pretrain", "--dataset", "mpii", "--data-root", str(root), "--out", str(out),
                                               "--steps", "3", *SMALL, "--set", "dataset_options.val_fraction=0.5"])
    assert result.exit_code == 0, result.output
    metrics = atomic.read_json(out / "metrics.json")
    assert 0.0 <= metrics["pckh"] <= 100.0 and metrics["steps"] == 3 and metrics["eval_images"] == 2
    assert set(metrics["pckh_per_joint"]) == set(mpii.JOINT_NAMES)
    config = atomic.read_json(out / "config.json")
    assert config["K"] == 16 and config["pretrain"]["task"] == "heatmap regression"
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["architecture"] == {"num_maps": 16, "channels": 16, "depth": 1, "stem_channels": 8}
    assert state["detector"]["head.weight"].shape[0] == 16
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    again = CliRunner().invoke(pretrain_cli, ["pretrain", "--dataset", "mpii", "--data-root", str(root), "--out", str(out),
                                              "--steps", "3", *SMALL])
    assert again.exit_code == 1 and "already holds a run" in " ".join(again.output.split())


def test_pretrained_detector_initialises_a_run(tmp_path, test_plugin, pretrain_cli):
    out = tmp_path / "pre"
    result = CliRunner().invoke(pretrain_cli, ["pretrain", "--dataset", "blobs", "--out", str(out), "--steps", "2", *SMALL])
    assert result.exit_code == 0, result.output
    assert "pck" in atomic.read_json(out / "metrics.json")
    run_dir = tmp_path / "run"
    args = ["run", "--method", "baseline", "--dataset", "blobs", "--K", "4", "--steps", "1", "--batch-size", "2",
            "--image-size", "32", "--perceptual", "none", "--device", "cpu", "--out", str(run_dir),
            "--set", "detector.channels=16", "--set", "detector.depth=1", "--set", "detector.stem_channels=8",
            "--detector-init", str(out / "checkpoint.pt")]
    result = CliRunner().invoke(pretrain_cli, args)
    assert result.exit_code == 0, result.output
    detector = atomic.read_json(run_dir / "config.json")["detector"]
    assert detector["adapt"] == "incremental" and detector["init"] == str((out / "checkpoint.pt").resolve())
    model = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert any(key.endswith("parametrizations.weight.0.mix") for key in model)


def test_pretrain_refuses_an_image_size_the_hourglass_cannot_take(tmp_path, pretrain_cli):
    mpii._CACHE.clear()
    root = write_mpii_fixture(tmp_path / "mpii")
    out = tmp_path / "pre"
    args = list(SMALL)
    args[args.index("--image-size") + 1] = "44"  # depth 1: sides must be multiples of 8
    result = CliRunner().invoke(pretrain_cli, ["pretrain", "--dataset", "mpii", "--data-root", str(root), "--out", str(out),
                                               "--steps", "1", *args])
    assert result.exit_code == 1 and "--image-size 44" in result.output and "40 or 48" in result.output
    assert not out.exists()
