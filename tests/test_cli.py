import json

import pytest
import torch
from click.testing import CliRunner

from lmbench.cli import cli

RUN_FILES = {"config.json", "metrics.json", "checkpoint.pt", "metrics.jsonl", "landmarks.png"}


@pytest.fixture
def runner():
    return CliRunner()


def test_methods_and_datasets_tables(runner, fresh_plugins):
    result = runner.invoke(cli, ["methods"])
    assert result.exit_code == 0 and "baseline" in result.output
    result = runner.invoke(cli, ["datasets"])
    assert result.exit_code == 0 and "synthetic" in result.output and "embedded" in result.output


def test_unknown_method_lists_valid_names(runner, fresh_plugins):
    result = runner.invoke(cli, ["run", "--method", "nope"])
    assert result.exit_code == 2
    assert "unknown method 'nope'" in result.output and "baseline" in result.output


def test_unknown_dataset_lists_valid_names(runner, fresh_plugins):
    result = runner.invoke(cli, ["run", "--method", "baseline", "--dataset", "nope"])
    assert result.exit_code == 2 and "synthetic" in result.output


@pytest.mark.parametrize("args", [["--K", "0"], ["--steps", "-3"], ["--device", "tpu"], ["--set", "nonsense"]])
def test_invalid_values_are_usage_errors(runner, fresh_plugins, args):
    result = runner.invoke(cli, ["run", "--method", "baseline", *args])
    assert result.exit_code == 2, result.output


def test_resume_needs_out(runner, fresh_plugins):
    result = runner.invoke(cli, ["run", "--method", "baseline", "--resume"])
    assert result.exit_code == 2 and "--out" in result.output


def test_run_eval_report_end_to_end(runner, test_plugin, tmp_path):
    out = tmp_path / "runs" / "tiny"
    args = ["run", "--method", "tiny", "--dataset", "blobs", "--K", "3", "--steps", "4", "--batch-size", "4",
            "--image-size", "32", "--out", str(out)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    assert not (out / "reconstructions.png").exists()  # the test method shows no passes
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("method", "K", "dataset", "nme", "nme_mean_shape", "steps", "train_seconds", "images_per_second", "seed"):
        assert key in metrics
    config = json.loads((out / "config.json").read_text())
    assert config["protocol"]["ridge_lambda"] > 0 and "torch" in config["environment"]
    # the CPU kind decides bit-repeatability (README, "Reproducibility"), so it is recorded
    assert config["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert config["environment"]["cpu"]

    again = runner.invoke(cli, args)
    assert again.exit_code == 1 and "--resume" in again.output

    result = runner.invoke(cli, ["eval", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["nme"] == pytest.approx(metrics["nme"])

    report = tmp_path / "report.md"
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "metrics.json").write_text("{not json")
    result = runner.invoke(cli, ["report", "--runs", str(tmp_path / "runs"), "--out", str(report)])
    assert result.exit_code == 0, result.output
    text = report.read_text()
    assert "| tiny | 3 | blobs |" in text


def test_eval_of_a_non_run_directory_fails_cleanly(runner, fresh_plugins, tmp_path):
    result = runner.invoke(cli, ["eval", str(tmp_path)])
    assert result.exit_code == 1 and "config.json" in result.output


def test_resume_refuses_a_different_run_and_applies_set(runner, test_plugin, tmp_path):
    out = tmp_path / "r"
    args = ["run", "--method", "tiny", "--dataset", "blobs", "--K", "3", "--steps", "2", "--batch-size", "4",
            "--image-size", "32", "--out", str(out)]
    assert runner.invoke(cli, args).exit_code == 0
    clash = runner.invoke(cli, ["run", "--method", "tiny", "--dataset", "blobs", "--K", "4", "--out", str(out),
                                "--resume"])
    assert clash.exit_code == 2 and "--K 4 (saved: 3)" in clash.output
    # Options left at their defaults come from the saved run; --steps extends it and --set refines it.
    resumed = runner.invoke(cli, ["run", "--method", "tiny", "--out", str(out), "--resume", "--steps", "3",
                                  "--set", "optim.lr=0.0005"])
    assert resumed.exit_code == 0, resumed.output
    config = json.loads((out / "config.json").read_text())
    assert config["K"] == 3 and config["dataset"] == "blobs" and config["steps"] == 3
    assert config["optim"]["lr"] == 0.0005
    # --out alone names the run to continue.
    alone = runner.invoke(cli, ["run", "--out", str(out), "--resume", "--steps", "4"])
    assert alone.exit_code == 0, alone.output
    assert json.loads((out / "config.json").read_text())["steps"] == 4


def test_run_without_method_is_a_usage_error(runner, tmp_path):
    result = runner.invoke(cli, ["run", "--out", str(tmp_path / "none")])
    assert result.exit_code == 2 and "--method" in result.output


def test_a_protocol_the_dataset_cannot_serve_fails_before_training(runner, test_plugin, tmp_path):
    out = tmp_path / "m"
    result = runner.invoke(cli, ["run", "--method", "tiny", "--dataset", "blobs", "--K", "3", "--steps", "2",
                                 "--batch-size", "4", "--image-size", "32", "--protocol", "mallis", "--out", str(out)])
    assert result.exit_code == 1 and "original-image pixels" in result.output and "'mallis'" in result.output
    assert not (out / "checkpoint.pt").exists()


def test_a_folder_run_trains_then_is_scored_on_an_annotated_dataset(runner, test_plugin, tmp_path):
    import numpy as np
    from PIL import Image

    images = tmp_path / "cats"
    images.mkdir()
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "runs" / "cats"
    result = runner.invoke(cli, ["run", "--method", "tiny", "--dataset", "folder", "--data-root", str(images),
                                 "--K", "3", "--steps", "2", "--batch-size", "2", "--image-size", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())  # rich wraps long lines
    assert "not evaluated" in printed and "--dataset NAME" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluated"] is False and (out / "checkpoint.pt").exists()
    with pytest.warns(UserWarning, match="not evaluated"):
        assert runner.invoke(cli, ["report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "r.md"),
                                   "--no-plots"]).exit_code == 0

    result = runner.invoke(cli, ["eval", str(out), "--dataset", "blobs"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluated"] is True and metrics["dataset"] == "blobs" and metrics["train_dataset"] == "folder"
    assert metrics["nme"] >= 0 and "not_evaluated_because" not in metrics
    assert json.loads((out / "config.json").read_text())["dataset"] == "folder"  # the training record stays


def test_perceptual_option_picks_the_backbones_own_layers_unless_set():
    from lmbench.cli import apply_perceptual_option
    from lmbench.config import RunConfig

    config = RunConfig()
    assert (config.perceptual.backbone, config.perceptual.layers) == ("vgg16", ["relu1_2", "relu2_2", "relu3_3"])
    apply_perceptual_option(config, "alexnet", None, [])
    assert (config.perceptual.backbone, config.perceptual.layers) == ("alexnet", None)
    config = RunConfig()
    config.perceptual.layers = ["relu2_2"]
    apply_perceptual_option(config, "vgg16", "w.pth", ['perceptual.layers=["relu2_2"]'])
    assert (config.perceptual.layers, config.perceptual.weights) == (["relu2_2"], "w.pth")
    config = RunConfig()
    apply_perceptual_option(config, None, None, [])
    assert config.perceptual.layers == ["relu1_2", "relu2_2", "relu3_3"]


def test_an_image_size_the_hourglass_cannot_take_fails_before_training(runner, fresh_plugins, tmp_path):
    out = tmp_path / "b48"
    result = runner.invoke(cli, ["run", "--method", "baseline", "--K", "3", "--steps", "2", "--batch-size", "2",
                                 "--image-size", "48", "--perceptual", "none", "--set", "detector.channels=8",
                                 "--set", "detector.stem_channels=8", "--out", str(out)])
    assert result.exit_code == 1
    assert "--image-size 48" in result.output and "multiple of 32" in result.output and "32 or 64" in result.output
    assert not out.exists()  # nothing half-written


def run_small_baseline(runner, out, *settings):
    """``lmbench run`` of a 2-step baseline on the blobs fixture, with ``--set`` for each setting."""
    args = ["run", "--method", "baseline", "--dataset", "blobs", "--K", "3", "--steps", "2", "--batch-size", "4",
            "--image-size", "32", "--perceptual", "none", "--out", str(out)]
    return runner.invoke(cli, args + [arg for setting in settings for arg in ("--set", setting)])


def test_a_non_positive_head_init_gain_fails_naming_the_option(runner, test_plugin, tmp_path):
    out = tmp_path / "g"
    result = run_small_baseline(runner, out, "detector.head_init_gain=0")
    assert result.exit_code == 1 and "detector.head_init_gain" in result.output
    assert not out.exists()


def test_an_unknown_network_in_lr_scale_fails_before_training(runner, test_plugin, tmp_path):
    out = tmp_path / "r"
    result = run_small_baseline(runner, out, "optim.lr_scale.detectr=2")
    assert result.exit_code == 1
    assert "optim.lr_scale" in result.output and "'detectr'" in result.output and "detector, generator" in result.output
    assert not out.exists()  # nothing half-written
