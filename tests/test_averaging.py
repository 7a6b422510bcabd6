"""The weight average (``optim.ema_decay``): its arithmetic, and that training never reads it."""

import json

import pytest
import torch
from torch import nn

from lmbench.adapt import load_detector_checkpoint
from lmbench.averaging import WeightAverage, evaluation_state
from lmbench.runner import RunError, reevaluate, run
from lmbench.train import CHECKPOINT, TRAIN_LOG, load_checkpoint
from test_curve import small_baseline


class Networks(nn.Module):
    """A stand-in method: one linear network and one BatchNorm network."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1, bias=False)
        self.norm = nn.BatchNorm1d(1)

    def networks(self):
        return {"linear": self.linear, "norm": self.norm}


def test_the_average_follows_the_warmed_up_decay_by_hand():
    method = Networks()
    with torch.no_grad():
        method.linear.weight.fill_(0.0)
    average = WeightAverage(method, decay=0.5)
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            method.linear.weight.fill_(value)
        average.update()
    # d_1 = min(0.5, 2/11), d_2 = min(0.5, 3/12), d_3 = min(0.5, 4/13)
    expected = 0.0
    for t, value in ((1, 1.0), (2, 2.0), (3, 3.0)):
        d = min(0.5, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * value
    assert average.average["linear.weight"].item() == pytest.approx(expected, abs=1e-6)
    assert average.updates == 3
    for _ in range(100):  # after the warm-up the decay is the configured one
        average.update()
    assert average.current_decay() == 0.5


def test_batchnorm_statistics_are_averaged_and_counters_left_alone():
    method = Networks()
    average = WeightAverage(method, decay=0.9)
    assert "norm.running_mean" in average.average and "norm.num_batches_tracked" not in average.average
    method.norm(torch.tensor([[4.0], [6.0]]))  # training mode: running_mean 0 -> 0.5
    average.update()
    assert 0.0 < average.average["norm.running_mean"].item() < 0.5


def test_swapped_in_lends_the_average_and_gives_the_weights_back():
    method = Networks()
    average = WeightAverage(method, decay=0.9)
    with torch.no_grad():
        method.linear.weight.fill_(5.0)
    average.update()
    with average.swapped_in():
        assert method.linear.weight.item() == pytest.approx(average.average["linear.weight"].item())
    assert method.linear.weight.item() == 5.0


def test_training_never_reads_the_average_and_evaluation_uses_it(test_plugin, tmp_path):
    plain = run(small_baseline(), tmp_path / "plain")
    config = small_baseline(eval_every=3)
    config.optim.ema_decay = 0.9
    averaged = run(config, tmp_path / "averaged")
    a, b = load_checkpoint(tmp_path / "plain" / CHECKPOINT), load_checkpoint(tmp_path / "averaged" / CHECKPOINT)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key  # the training weights are the same
    assert b["average_updates"] == 6 and "average" not in a
    assert any(not torch.equal(b["average"][k], b["model"][k]) for k in b["average"])
    assert averaged["nme"] != plain["nme"]
    last = [json.loads(line) for line in (tmp_path / "averaged" / TRAIN_LOG).read_text().splitlines()][-1]
    assert last["nme"] == averaged["nme"]  # the probes score the average too
    again = reevaluate(tmp_path / "averaged")  # lmbench eval RUN: from the checkpoint's average
    assert again["nme"] == pytest.approx(averaged["nme"], abs=1e-9)
    detector, _ = load_detector_checkpoint(tmp_path / "averaged" / CHECKPOINT)  # --detector-init
    for key, value in detector.items():
        assert torch.equal(value, evaluation_state(b)[f"detector.{key}"]), key


def test_resume_continues_the_average_bit_for_bit(test_plugin, tmp_path):
    def config(steps):
        c = small_baseline(steps=steps)
        c.optim.ema_decay = 0.8
        return c

    run(config(6), tmp_path / "straight")
    run(config(3), tmp_path / "resumed")
    run(config(6), tmp_path / "resumed", resume=True)
    a, b = load_checkpoint(tmp_path / "straight" / CHECKPOINT), load_checkpoint(tmp_path / "resumed" / CHECKPOINT)
    assert a["average_updates"] == b["average_updates"] == 6
    for key in a["average"]:
        assert torch.equal(a["average"][key], b["average"][key]), key


def test_resume_cannot_switch_the_average_on(test_plugin, tmp_path):
    run(small_baseline(steps=2), tmp_path / "r")
    config = small_baseline(steps=4)
    config.optim.ema_decay = 0.9
    before = (tmp_path / "r" / "config.json").read_text()
    with pytest.raises(RunError, match="optim.ema_decay"):
        run(config, tmp_path / "r", resume=True)
    assert (tmp_path / "r" / "config.json").read_text() == before  # nothing rewritten


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_a_decay_outside_zero_to_one_fails_before_anything_is_written(test_plugin, tmp_path, decay):
    config = small_baseline()
    config.optim.ema_decay = decay
    with pytest.raises(ValueError, match="optim.ema_decay"):
        run(config, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_configs_saved_before_the_average_evaluated_their_last_iterate():
    from lmbench.config import upgrade_saved_config

    assert upgrade_saved_config({"optim": {"lr": 1e-3}})["optim"] == {"lr": 1e-3, "ema_decay": 0.0}
    assert upgrade_saved_config({"optim": {"ema_decay": 0.99}})["optim"]["ema_decay"] == 0.99
