"""The NaN guard through the CLI: a clean one-line error naming the step and the term, exit 1,
and the last good checkpoint left as it was."""

import pytest
import torch
from click.testing import CliRunner

from lmbench.cli import cli
from lmbench.train import CHECKPOINT, load_checkpoint


def cli_args(out, checkpoint_every=2):
    return ["run", "--method", "tiny", "--dataset", "blobs", "--K", "3", "--steps", "6", "--batch-size", "4",
            "--image-size", "32", "--device", "cpu", "--out", str(out), "--set", "log_every=1",
            "--set", f"checkpoint_every={checkpoint_every}"]


@pytest.fixture
def poison(monkeypatch):
    """Make TinyMethod's loss (or its gradient) non-finite from a given call on."""
    from plugin_fixtures import TinyMethod

    original = TinyMethod.losses
    calls = {"n": 0}

    def set_up(at: int, where: str):
        def poisoned(self, images, generator, points=None):
            terms = original(self, images, generator)
            if calls["n"] >= at:
                if where == "loss":
                    terms["peak"] = terms["peak"] + float("inf")
                else:  # a finite loss (sqrt(0) = 0) whose gradient is NaN (inf * 0)
                    terms["peak"] = terms["peak"] + (self.detector.weight * 0).sum().sqrt()
            calls["n"] += 1
            return terms

        monkeypatch.setattr(TinyMethod, "losses", poisoned)

    return set_up


def test_cli_stops_on_a_non_finite_loss_and_keeps_the_last_good_checkpoint(test_plugin, tmp_path, poison):
    poison(at=3, where="loss")
    out = tmp_path / "r"
    result = CliRunner().invoke(cli, cli_args(out))
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "Error: step 3: loss term 'peak' is inf" in output
    assert "last good checkpoint (step 2) is kept in" in output and "Traceback" not in output
    state = load_checkpoint(out / CHECKPOINT)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (out / "metrics.json").exists()


def test_cli_stops_on_a_non_finite_gradient_before_the_optimizer_step(test_plugin, tmp_path, poison):
    poison(at=0, where="gradient")
    out = tmp_path / "r"
    result = CliRunner().invoke(cli, cli_args(out))
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert "step 0: the gradient of network 'detector' is not finite" in output
    assert "no checkpoint had been written yet" in output
    assert not (out / CHECKPOINT).exists()


def test_resume_after_a_non_finite_stop_continues_from_the_kept_checkpoint(test_plugin, tmp_path, poison):
    poison(at=3, where="loss")
    out = tmp_path / "r"
    assert CliRunner().invoke(cli, cli_args(out)).exit_code == 1
    poison(at=10**9, where="loss")  # the cause is fixed (e.g. a lower learning rate)
    result = CliRunner().invoke(cli, [*cli_args(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out / CHECKPOINT)["step"] == 6
