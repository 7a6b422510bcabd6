import pytest
import torch

from lmbench import atomic, registry
from lmbench.config import DetectorConfig, RunConfig
from lmbench.nn.discriminator import PatchDiscriminator, call_frozen
from lmbench.runner import run
from lmbench.train import build_optimizer, train_step

from lmbench.methods.supervised import SupervisedLaplaceKL, SupervisedSAM

SMALL = DetectorConfig(channels=16, depth=1, stem_channels=8)


def config(method="supervised_laplacekl", **options) -> RunConfig:
    return RunConfig(method=method, dataset="blobs", K=5, steps=2, batch_size=4, image_size=32, seed=3,
                     log_every=1, checkpoint_every=2, eval_batch_size=16, detector=SMALL,
                     method_options=dict(options))


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.rand(n, 5, 2, generator=g) * 1.2 - 0.6


def test_methods_are_registered(fresh_plugins):
    methods = registry.get_method("supervised_sam"), registry.get_method("supervised_laplacekl")
    assert [m.builder for m in methods] == [SupervisedSAM, SupervisedLaplaceKL]


def test_options_are_checked_and_recorded():
    c = config(beta=5)
    method = SupervisedLaplaceKL(c)
    assert c.method_options == {"beta": 5.0, "augment": True, "adversarial_weight": 0.0, "real_sigma": 1.0,
                                "disc_channels": 32, "target_scale": 1.0, "kl_direction": "target_pred"}
    assert method.temperature == pytest.approx(0.2)
    with pytest.raises(ValueError, match="unknown method_options loss"):
        SupervisedLaplaceKL(config(loss="l1"))
    with pytest.raises(ValueError, match="expects float"):
        SupervisedSAM(config("supervised_sam", beta="high"))
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        SupervisedSAM(config("supervised_sam", loss="huber"))


def test_k_must_equal_the_number_of_annotated_points():
    c = config()
    c.K = 10
    images, points = batch()
    with pytest.raises(ValueError, match="--K 5"):
        SupervisedLaplaceKL(c).losses(images, torch.Generator().manual_seed(0), points=points)


def test_augmentation_moves_points_with_the_image():
    method = SupervisedSAM(config("supervised_sam"))
    method.config.warp.rotation_deg, method.config.warp.translation = 30.0, 0.2
    images = torch.zeros(3, 3, 32, 32)
    images[:, :, 9:12, 20:23] = 1.0  # a bright square centred on pixel (21, 10), i.e. (21.5, 10.5)
    points = torch.tensor([[21.5, 10.5]]).mul(2 / 32).sub(1).expand(3, 1, 2).clone()
    warped, moved = method.augment(images, points, torch.Generator().manual_seed(1))
    assert not torch.allclose(moved, points)
    for image, point in zip(warped, moved):
        mass = image[0]
        ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
        centre = torch.stack([(mass * xs).sum(), (mass * ys).sum()]) / mass.sum()
        assert torch.allclose(centre, (point[0] + 1) * 16, atol=0.3)


@pytest.mark.parametrize("cls, term", [(SupervisedSAM, "sam_l1"), (SupervisedLaplaceKL, "laplace_kl")])
def test_supervised_loss_trains_the_detector(cls, term):
    method = cls(config(cls.name))
    images, points = batch()
    terms = method.losses(images, torch.Generator().manual_seed(0), points=points)
    assert set(terms) == {term}
    terms[term].backward()
    grads = [p.grad for p in method.detector.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert method.detector.head.weight.grad.abs().sum() > 0


def grads_of(module):
    return [p.grad for p in module.parameters()]


def test_adversarial_terms_update_only_their_player():
    method = SupervisedLaplaceKL(config(adversarial_weight=0.5))
    assert method.extra_split == "train" and isinstance(method.discriminator, PatchDiscriminator)
    images, points = batch()
    unlabelled, _ = batch(seed=1)

    def terms():
        method.zero_grad(set_to_none=True)
        return method.losses(images, torch.Generator().manual_seed(0), points=points, extra_images=unlabelled)

    t = terms()
    assert set(t) == {"laplace_kl", "adv_detector", "adv_discriminator"}
    t["adv_discriminator"].backward()
    assert all(g is None for g in grads_of(method.detector))
    assert all(g is not None and g.abs().sum() > 0 for g in grads_of(method.discriminator))

    terms()["adv_detector"].backward()
    assert all(g is None for g in grads_of(method.discriminator))
    assert method.detector.head.weight.grad.abs().sum() > 0

    # A whole training step moves both players (one optimizer, separate gradients).
    c = method.config
    optimizer = build_optimizer(method, c)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    train_step(method, optimizer, images, c, 0, points=points, extra_images=unlabelled)
    after = method.state_dict()
    assert not torch.equal(before["detector.head.weight"], after["detector.head.weight"])
    assert not torch.equal(before["discriminator.net.0.weight"], after["discriminator.net.0.weight"])


def test_discriminator_step_alone_leaves_the_detector_unchanged():
    method = SupervisedSAM(config("supervised_sam", adversarial_weight=1.0))
    images, points = batch()
    unlabelled, _ = batch(seed=2)
    optimizer = build_optimizer(method, method.config)
    detector_before = {k: v.clone() for k, v in method.detector.state_dict().items() if "running" not in k and "num_batches" not in k}
    disc_before = {k: v.clone() for k, v in method.discriminator.state_dict().items()}
    optimizer.zero_grad(set_to_none=True)
    method.losses(images, torch.Generator().manual_seed(0), points=points, extra_images=unlabelled)["adv_discriminator"].backward()
    optimizer.step()
    for k, v in detector_before.items():
        assert torch.equal(v, method.detector.state_dict()[k]), k
    assert any(not torch.equal(v, method.discriminator.state_dict()[k]) for k, v in disc_before.items())


def test_call_frozen_passes_gradients_to_inputs_only():
    d = PatchDiscriminator(3 + 2, channels=4)
    images, maps = torch.rand(2, 3, 16, 16), torch.rand(2, 2, 8, 8, requires_grad=True)
    out = call_frozen(d, images, maps)
    assert torch.allclose(out, d(images, maps).detach())
    out.sum().backward()
    assert maps.grad is not None and all(p.grad is None for p in d.parameters())


def test_adversarial_method_without_unlabelled_images_says_so():
    method = SupervisedSAM(config("supervised_sam", adversarial_weight=1.0))
    images, points = batch()
    with pytest.raises(ValueError, match="extra_images"):
        method.losses(images, torch.Generator().manual_seed(0), points=points)


@pytest.mark.parametrize(
    "method, options",
    [("supervised_sam", {}), ("supervised_laplacekl", {}), ("supervised_laplacekl", {"adversarial_weight": 0.1})],
)
def test_two_step_runs_report_direct_nme_and_spread(test_plugin, tmp_path, method, options):
    metrics = run(config(method, **options), tmp_path / "r")
    saved = atomic.read_json(tmp_path / "r" / "metrics.json")
    for key in ("nme", "nme_fit_split", "heatmap_spread", "supervised", "regressor", "n_fit"):
        assert saved[key] == metrics[key], key
    assert metrics["supervised"] is True and metrics["regressor"] == "none (supervised)"
    assert metrics["n_fit"] == 0 and metrics["n_test"] == 12
    assert metrics["nme"] > 0 and metrics["heatmap_spread"] > 0
    recorded = atomic.read_json(tmp_path / "r" / "config.json")["method_options"]
    assert recorded["beta"] == 10.0 and recorded["adversarial_weight"] == options.get("adversarial_weight", 0.0)
    log = (tmp_path / "r" / "metrics.jsonl").read_text()
    assert ("adv_discriminator" in log) == bool(options)
