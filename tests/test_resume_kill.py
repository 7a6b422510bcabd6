"""Exact resume after a real SIGKILL of ``lmbench run`` (CPU: bit-identical weights and log)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmbench.config import RunConfig
from lmbench.runner import run
from lmbench.train import CHECKPOINT, TRAIN_LOG, load_checkpoint

TESTS = Path(__file__).parent

# Registers the test suite's plugin, optionally slows every step down (without changing
# what it computes) so that the test can kill the run mid-training, and runs the CLI.
LAUNCHER = f"""
import os, sys, time
sys.path.insert(0, {str(TESTS)!r})
from lmbench import plugins
from plugin_fixtures import TestPlugin, TinyMethod
plugins.get_plugin_manager().register(TestPlugin(), name="lmbench-test-plugin")
delay = float(os.environ.get("STEP_DELAY", "0"))
if delay:
    losses = TinyMethod.losses
    def slow(self, *args, **kwargs):
        time.sleep(delay)
        return losses(self, *args, **kwargs)
    TinyMethod.losses = slow
from lmbench.cli import main
main()
"""

STEPS, CHECKPOINT_EVERY, LOG_EVERY = 60, 10, 3


def tiny_config(**overrides) -> RunConfig:
    config = RunConfig(method="tiny", dataset="blobs", K=3, steps=STEPS, batch_size=4, image_size=32, seed=11,
                       device="cpu", threads=1, log_every=LOG_EVERY, checkpoint_every=CHECKPOINT_EVERY)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def cli_args(out: Path) -> list[str]:
    return ["run", "--method", "tiny", "--dataset", "blobs", "--K", "3", "--steps", str(STEPS), "--batch-size", "4",
            "--image-size", "32", "--seed", "11", "--device", "cpu", "--threads", "1", "--out", str(out),
            "--set", f"log_every={LOG_EVERY}", "--set", f"checkpoint_every={CHECKPOINT_EVERY}"]


@pytest.fixture(autouse=True)
def restore_threads():
    """The runs here use one thread (tiny ops on a shared machine); give the others theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def log_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / TRAIN_LOG).read_text().splitlines()]


def assert_same_training(a: Path, b: Path) -> None:
    """Bit-identical weights, optimizer state and logged losses."""
    sa, sb = load_checkpoint(a / CHECKPOINT), load_checkpoint(b / CHECKPOINT)
    assert sa["step"] == sb["step"] == STEPS
    assert sa["model"].keys() == sb["model"].keys()
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    for index, state in sa["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, sb["optimizer"]["state"][index][key]), (index, key)
    la, lb = log_records(a), log_records(b)
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [*range(LOG_EVERY, STEPS + 1, LOG_EVERY)]
    assert [(r["loss"], r["peak"], r["lr"]) for r in la] == [(r["loss"], r["peak"], r["lr"]) for r in lb]


def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(test_plugin, tmp_path):
    run(tiny_config(), tmp_path / "straight")

    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(launcher), *cli_args(out)], env={**os.environ,
                               "STEP_DELAY": "0.02"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT).exists():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        time.sleep(0.25)  # well past the first checkpoint, and between two of them
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(out / CHECKPOINT)["step"]
    assert CHECKPOINT_EVERY <= killed_at < STEPS
    assert not (out / "metrics.json").exists()

    # What a kill in the middle of a write leaves behind: a checkpoint's temporary file and
    # a log line cut short. Neither may break the resumed run.
    stale = out / f".{CHECKPOINT}.x1y2z3.tmp"
    stale.write_bytes(b"half a checkpoint")
    with open(out / TRAIN_LOG, "a") as log:
        log.write('{"step": 99999, "loss": 0.1')

    resumed = subprocess.run([sys.executable, str(launcher), *cli_args(out), "--resume"],
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert not stale.exists()
    assert (out / "metrics.json").exists()
    assert_same_training(tmp_path / "straight", out)


def test_resume_without_a_checkpoint_restarts_and_drops_the_stale_log(test_plugin, tmp_path):
    """A run killed before its first checkpoint: --resume starts at step 0 with a clean log."""
    run(tiny_config(), tmp_path / "straight")
    out = tmp_path / "early"
    out.mkdir()
    (out / TRAIN_LOG).write_text('{"step": 3, "loss": 5.0}\n{"step": 6, "loss": 5.0}\n{"step": 9, "lo')
    run(tiny_config(), out, resume=True)
    assert_same_training(tmp_path / "straight", out)
