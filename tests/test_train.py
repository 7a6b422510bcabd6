import json

import pytest
import torch

from lmbench import atomic
from lmbench.config import RunConfig, apply_override, upgrade_saved_config
from lmbench.runner import RunError, run
from lmbench.train import CHECKPOINT, NonFiniteError, batch_indices, load_checkpoint


def tiny_config(**overrides) -> RunConfig:
    config = RunConfig(method="tiny", dataset="blobs", K=3, steps=6, batch_size=4, image_size=32,
                       log_every=1, checkpoint_every=3, seed=5)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_batches_are_a_pure_function_of_seed_and_step():
    a = batch_indices(10, 4, seed=1, step=7)
    assert torch.equal(a, batch_indices(10, 4, seed=1, step=7))
    epoch = torch.cat([batch_indices(10, 5, seed=1, step=s) for s in (0, 1)])
    assert sorted(epoch.tolist()) == list(range(10))  # one epoch visits every image once


def test_resume_matches_an_uninterrupted_run_bit_for_bit(test_plugin, tmp_path):
    run(tiny_config(), tmp_path / "straight")
    run(tiny_config(steps=3), tmp_path / "resumed")
    run(tiny_config(), tmp_path / "resumed", resume=True)
    a = load_checkpoint(tmp_path / "straight" / CHECKPOINT)
    b = load_checkpoint(tmp_path / "resumed" / CHECKPOINT)
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    log = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_loads_with_weights_only(test_plugin, tmp_path):
    run(tiny_config(steps=2), tmp_path / "r")
    state = torch.load(tmp_path / "r" / CHECKPOINT, weights_only=True)
    assert {"step", "model", "optimizer", "rng", "config"} <= set(state)


def test_existing_run_needs_resume(test_plugin, tmp_path):
    run(tiny_config(steps=1), tmp_path / "r")
    with pytest.raises(RunError, match="--resume"):
        run(tiny_config(steps=1), tmp_path / "r")


def test_non_finite_loss_names_the_step_and_term(test_plugin, tmp_path, monkeypatch):
    from plugin_fixtures import TinyMethod

    original = TinyMethod.losses

    def poisoned(self, images, generator, points=None):
        terms = original(self, images, generator)
        if self._step_counter == 2:
            terms["peak"] = terms["peak"] * float("nan")
        self._step_counter += 1
        return terms

    monkeypatch.setattr(TinyMethod, "_step_counter", 0, raising=False)
    monkeypatch.setattr(TinyMethod, "losses", poisoned)
    with pytest.raises(NonFiniteError, match="step 2: loss term 'peak'"):
        run(tiny_config(checkpoint_every=1), tmp_path / "r")
    assert load_checkpoint(tmp_path / "r" / CHECKPOINT)["step"] == 2  # the last good one


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_gives_the_mode_of_a_new_file(tmp_path):
    """Results are for others to read too: the umask decides, not mkstemp's owner-only 0600."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        atomic.write_json(tmp_path / "out.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o644


def test_overrides():
    config = RunConfig()
    apply_override(config, "detector.channels=128")
    apply_override(config, "warp.scale=[0.8, 1.2]")
    apply_override(config, "dataset_options.train_size=100")
    assert config.detector.channels == 128 and config.warp.scale == (0.8, 1.2)
    assert config.dataset_options == {"train_size": 100}
    with pytest.raises(ValueError, match="unknown setting 'detector.nope'"):
        apply_override(config, "detector.nope=1")
    with pytest.raises(ValueError, match="expects int"):
        apply_override(config, "steps=lots")


def test_config_round_trip():
    config = RunConfig(K=7)
    config.warp.scale = (0.8, 1.25)
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_configs_saved_before_the_tps_jitter_keep_their_similarity_pairs():
    saved = json.loads(json.dumps(RunConfig().to_dict()))
    del saved["warp"]["tps_sigma"], saved["warp"]["tps_grid"]
    assert RunConfig.from_dict(saved).warp.tps_sigma == 0.0
    assert upgrade_saved_config(saved)["warp"] == {**saved["warp"], "tps_sigma": 0.0, "tps_grid": 5}
    assert RunConfig().warp.tps_sigma == 0.05  # new runs get the jitter


def test_configs_saved_before_the_generator_input_norm_keep_their_generator():
    saved = json.loads(json.dumps(RunConfig().to_dict()))
    del saved["generator"]["input_norm"]
    assert RunConfig.from_dict(saved).generator.input_norm is False  # their checkpoints have no such layer
    assert RunConfig().generator.input_norm is True  # new runs get the originals' normalisation


def test_configs_saved_before_the_routing_option_were_batched():
    for method, before, pairs in [("inter_intra", {}, {}), ("inter_subject", {"direct_path": False}, {"pairs": "warp"})]:
        saved = {**RunConfig(method=method).to_dict(), "method_options": before}
        saved = json.loads(json.dumps(saved))
        assert upgrade_saved_config(saved)["method_options"] == {**before, "routing": "batched", **pairs}, method
    baseline = json.loads(json.dumps(RunConfig(method="baseline").to_dict()))
    assert upgrade_saved_config(baseline)["method_options"] == {}
    separate = {**RunConfig(method="inter_intra").to_dict(), "method_options": {"routing": "separate"}}
    assert upgrade_saved_config(separate)["method_options"] == {"routing": "separate"}


def test_inter_subject_configs_saved_before_the_pairs_option_warped_x_alone():
    """Before 2026-12-03 inter_subject's x was the undeformed image (``pairs = "warp"``)."""
    oldest = {**RunConfig(method="inter_subject").to_dict(), "method_options": {"direct_path": False, "routing": "batched"}}
    assert RunConfig.from_dict(oldest).method_options["pairs"] == "warp"
    new = {**RunConfig(method="inter_subject").to_dict(), "method_options": {"pairs": "views", "routing": "batched"}}
    assert upgrade_saved_config(new)["method_options"] == {"pairs": "views", "routing": "batched"}


def test_cycle_configs_saved_before_the_backward_option_ran_the_baseline_both_ways():
    """Before 2026-12-03 cycle's second term was G(x, H(x')) vs x' (``backward = "direct"``)."""
    oldest = {**RunConfig(method="cycle").to_dict(), "method_options": {}}
    assert upgrade_saved_config(oldest)["method_options"] == {"routing": "batched", "backward": "direct"}
    separate = {**RunConfig(method="cycle").to_dict(), "method_options": {"routing": "separate"}}
    assert upgrade_saved_config(separate)["method_options"] == {"routing": "separate", "backward": "direct"}
    new = {**RunConfig(method="cycle").to_dict(), "method_options": {"routing": "batched", "backward": "auxiliary"}}
    assert upgrade_saved_config(new)["method_options"] == new["method_options"]
    assert RunConfig.from_dict(oldest).method_options["backward"] == "direct"


def test_configs_saved_before_the_padding_mask_keep_their_loss():
    saved = json.loads(json.dumps(RunConfig().to_dict()))
    del saved["warp"]["mask_padding"]
    assert RunConfig.from_dict(saved).warp.mask_padding is False  # their loss counted x''s padding
    very_old = json.loads(json.dumps(saved))
    del very_old["warp"]["tps_sigma"]  # predates both: both filled in
    assert upgrade_saved_config(very_old)["warp"] == {**saved["warp"], "tps_sigma": 0.0, "mask_padding": False}
    assert RunConfig().warp.mask_padding is True


def _baseline_with_small_networks(lr_scale):
    from lmbench.registry import get_method

    config = RunConfig(method="baseline", K=3, image_size=32, batch_size=4, seed=1)
    config.perceptual.backbone = "none"
    config.detector.channels, config.detector.stem_channels, config.detector.depth = 8, 8, 1
    config.generator.conv_dim, config.generator.res_blocks = 4, 1
    config.optim.lr_scale = dict(lr_scale)
    torch.manual_seed(0)
    return get_method("baseline").builder(config).double(), config  # float64: exact step ratios


def test_lr_scale_multiplies_each_networks_learning_rate():
    from lmbench.train import build_optimizer, train_step

    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    deltas = {}
    for scale in ({}, {"detector": 3.0}):
        method, config = _baseline_with_small_networks(scale)
        before = {k: v.clone() for k, v in method.state_dict().items()}
        optimizer = build_optimizer(method, config)
        train_step(method, optimizer, images, config, step=0)
        after = method.state_dict()
        deltas[len(scale)] = {k: after[k] - before[k] for k in before if after[k].is_floating_point()}
        lrs = sorted(g["lr"] for g in optimizer.param_groups)
        assert lrs == ([1e-3] if not scale else [1e-3, 3e-3])  # no scale: the one group of before
    plain, scaled = deltas[0], deltas[1]
    moved = [k for k in plain if k.startswith("detector.") and "running" not in k and plain[k].abs().max() > 0]
    assert moved  # the same gradients, so the detector's Adam step is exactly 3x as long
    for k in moved:
        assert torch.allclose(scaled[k], 3 * plain[k], rtol=1e-9, atol=1e-15), k
    for k in plain:
        if k.startswith("generator.") and "running" not in k:
            assert torch.allclose(scaled[k], plain[k], rtol=1e-9, atol=1e-15), k


def test_lr_scale_names_only_the_methods_networks_with_positive_multipliers():
    from lmbench.train import build_optimizer

    for scale, message in (({"detectr": 2.0}, "'detectr' is not a network"), ({"generator": 0}, "positive")):
        method, config = _baseline_with_small_networks(scale)
        with pytest.raises(ValueError, match=message):
            build_optimizer(method, config)


def test_resume_takes_the_new_lr_scale_multipliers(test_plugin, tmp_path):
    config = tiny_config(steps=3)
    config.optim.lr_scale = {"detector": 3.0}
    run(config, tmp_path / "r")
    config = tiny_config()
    config.optim.lr_scale = {"detector": 1.5}  # changed on --resume, as a lower optim.lr may be
    run(config, tmp_path / "r", resume=True)
    (group,) = load_checkpoint(tmp_path / "r" / CHECKPOINT)["optimizer"]["param_groups"]
    assert group["lr_scale"] == 1.5 and group["lr"] == pytest.approx(1.5e-3)


def test_resume_cannot_switch_lr_scale_on_and_leaves_the_config(test_plugin, tmp_path):
    run(tiny_config(steps=2), tmp_path / "r")
    before = (tmp_path / "r" / "config.json").read_text()
    config = tiny_config(steps=4)
    config.optim.lr_scale = {"detector": 2.0}
    with pytest.raises(RunError, match="optim.lr_scale"):
        run(config, tmp_path / "r", resume=True)
    assert (tmp_path / "r" / "config.json").read_text() == before
