"""The learning curve (``--eval-every``): probes score the detector without changing training."""

import json

import pytest
import torch

from lmbench import curve
from lmbench.config import RunConfig
from lmbench.report import collect_runs, curve_table, write_report
from lmbench.runner import RunError, run
from lmbench.train import CHECKPOINT, TRAIN_LOG, load_checkpoint


def small_baseline(**overrides) -> RunConfig:
    """The baseline (BatchNorm in both networks) with small networks on the blobs fixture."""
    config = RunConfig(method="baseline", dataset="blobs", K=3, steps=6, batch_size=4, image_size=32, seed=3,
                       log_every=5, checkpoint_every=100)
    config.perceptual.backbone = "none"
    config.detector.channels, config.detector.stem_channels, config.detector.depth = 8, 8, 1
    config.generator.conv_dim, config.generator.res_blocks = 4, 1
    config.protocol.floors, config.protocol.sweep_sizes = False, (5,)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def log_records(run_dir):
    return [json.loads(line) for line in (run_dir / TRAIN_LOG).read_text().splitlines()]


def test_probes_leave_training_bit_for_bit_as_without(test_plugin, tmp_path):
    plain = run(small_baseline(), tmp_path / "plain")
    probed = run(small_baseline(eval_every=2), tmp_path / "probed")
    a, b = load_checkpoint(tmp_path / "plain" / CHECKPOINT), load_checkpoint(tmp_path / "probed" / CHECKPOINT)
    for key in a["model"]:  # weights and BatchNorm's running statistics alike
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert plain["nme"] == probed["nme"]
    records = log_records(tmp_path / "probed")
    assert [r["step"] for r in records] == [2, 4, 5, 6]  # the probes' steps join the logged ones
    assert [r["step"] for r in records if "nme" in r] == [2, 4, 6]
    assert all("nme" not in r for r in log_records(tmp_path / "plain"))
    assert not (tmp_path / "plain" / curve.CURVE_CSV).exists() and not (tmp_path / "plain" / curve.CURVE_FIGURE).exists()
    assert records[-1]["nme"] == probed["nme"]  # the last probe is the final evaluation's number
    assert records[-1]["nme_mean_shape"] == probed["nme_mean_shape"]
    assert records[-1]["nme_fit_split"] == probed["nme_fit_split"]  # the test-free curve


def test_a_run_with_probes_writes_its_curve(test_plugin, tmp_path):
    metrics = run(small_baseline(eval_every=3), tmp_path / "r")
    lines = (tmp_path / "r" / curve.CURVE_CSV).read_text().splitlines()
    assert lines[0] == "step,train_seconds,nme,nme_backward,nme_mean_shape,nme_fit_split,wandering_points,border_points"
    assert [line.split(",")[0] for line in lines[1:]] == ["3", "6"]
    assert float(lines[-1].split(",")[2]) == pytest.approx(metrics["nme"], abs=1e-4)
    assert (tmp_path / "r" / curve.CURVE_FIGURE).read_bytes().startswith(b"\x89PNG")


def test_resume_keeps_the_probes_of_the_steps_it_keeps(test_plugin, tmp_path):
    run(small_baseline(eval_every=2), tmp_path / "straight")
    run(small_baseline(eval_every=2, steps=3), tmp_path / "resumed")
    run(small_baseline(eval_every=2), tmp_path / "resumed", resume=True)
    straight = {r["step"]: r["nme"] for r in curve.read_curve(tmp_path / "straight" / TRAIN_LOG)}
    resumed = {r["step"]: r["nme"] for r in curve.read_curve(tmp_path / "resumed" / TRAIN_LOG)}
    assert sorted(resumed) == [2, 3, 4, 6]  # step 3 was the first run's last step
    assert all(resumed[step] == straight[step] for step in (2, 4, 6))


def test_probe_time_is_left_out_of_the_training_time(test_plugin, tmp_path, monkeypatch):
    clock = {"now": 0.0}

    def perf_counter():  # every reading advances a fake clock by one second
        clock["now"] += 1.0
        return clock["now"]

    monkeypatch.setattr("lmbench.train.time.perf_counter", perf_counter)
    real_make_probe = curve.make_probe

    def slow_probe(*args, **kwargs):
        probe = real_make_probe(*args, **kwargs)

        def timed():
            clock["now"] += 1000.0  # a probe "takes" 1,000 s
            return probe()
        return timed

    monkeypatch.setattr("lmbench.runner.make_probe", slow_probe)
    metrics = run(small_baseline(eval_every=2, log_every=1), tmp_path / "r")
    records = log_records(tmp_path / "r")
    assert metrics["train_seconds"] < 100 and all(r["train_seconds"] < 100 for r in records)
    assert all(r["images_per_second"] > 0.01 for r in records)  # no window spans a probe
    assert [r["probe_seconds"] >= 1000 for r in records if "nme" in r] == [True, True, True]
    assert load_checkpoint(tmp_path / "r" / CHECKPOINT)["train_seconds"] < 100


def test_a_negative_eval_every_fails_before_anything_is_written(test_plugin, tmp_path):
    with pytest.raises(RunError, match="eval_every"):
        run(small_baseline(eval_every=-1), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_a_malformed_training_log_names_the_file_and_line(tmp_path):
    log = tmp_path / TRAIN_LOG
    log.write_text('{"step": 1, "loss": 1.0, "nme": 30.0}\n{"step": 2, "loss"\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2"):
        curve.read_curve(log)


def test_the_report_tabulates_and_plots_the_curves_over_seeds(test_plugin, tmp_path):
    for seed in (0, 1):
        run(small_baseline(eval_every=3, seed=seed), tmp_path / "runs" / f"s{seed}")
    run(small_baseline(seed=2, steps=3), tmp_path / "runs" / "s2-other-steps")  # another variant: no curve
    frame = collect_runs(tmp_path / "runs")
    table = curve_table(frame)
    lines = table.splitlines()
    assert lines[0].startswith("| step | baseline") and len(lines) == 4  # header, rule, steps 3 and 6
    values = [frame.loc[frame["seed"] == s, "curve"].item()[6] for s in (0, 1)]
    mean = sum(values) / 2
    assert lines[3].startswith("| 6 |") and f"{mean:.2f} ± " in lines[3] and "(2)" in lines[3]
    files = write_report(tmp_path / "runs", tmp_path / "report" / "results.md")
    assert "## NME during training" in files.text
    assert files.plots["curve"] and files.plots["curve"][0].read_bytes().startswith(b"\x89PNG")


def test_the_cli_option_probes_and_prints_the_nme(test_plugin, tmp_path):
    from click.testing import CliRunner

    from lmbench.cli import cli

    args = ["run", "--method", "baseline", "--dataset", "blobs", "--K", "3", "--steps", "4", "--batch-size", "4",
            "--image-size", "32", "--perceptual", "none", "--set", "detector.channels=8", "--set",
            "detector.stem_channels=8", "--set", "detector.depth=1", "--set", "protocol.floors=false"]
    result = CliRunner().invoke(cli, args + ["--eval-every", "2", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    final = json.loads((tmp_path / "r" / "metrics.json").read_text())["nme"]
    assert "step 4/4 loss" in result.output and f"NME {final:.2f} %" in result.output  # a log gets plain lines
    assert json.loads((tmp_path / "r" / "config.json").read_text())["eval_every"] == 2
    assert (tmp_path / "r" / curve.CURVE_CSV).read_text().count("\n") == 3  # header, steps 2 and 4
    result = CliRunner().invoke(cli, args + ["--eval-every", "-1", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "--eval-every" in result.output
    assert not (tmp_path / "bad").exists()
