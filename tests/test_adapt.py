import warnings

import pytest
import torch
from torch import nn

from lmbench import atomic
from lmbench.adapt import initialise_detector, load_detector_checkpoint, make_incremental
from lmbench.config import DetectorConfig, RunConfig
from lmbench.nn.hourglass import HourglassDetector

ARCH = {"channels": 16, "depth": 1, "stem_channels": 8}


def pretrained(tmp_path, num_maps=5, seed=0):
    torch.manual_seed(seed)
    detector = HourglassDetector(num_maps, **ARCH)
    with torch.no_grad():  # non-trivial BN statistics, so that loading them matters
        for module in detector.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "pretrained.pt"
    atomic.save_torch(path, {"detector": detector.state_dict(), "architecture": {"num_maps": num_maps, **ARCH}})
    return detector, path


def fresh(num_maps, path, adapt, **arch):
    torch.manual_seed(123)
    config = DetectorConfig(**{**ARCH, **arch}, init=str(path) if path else None, adapt=adapt)
    return initialise_detector(HourglassDetector.from_config(num_maps, config), config)


def count_3x3(detector):
    return sum(1 for m in detector.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))


def test_incremental_is_the_identity_at_initialisation(tmp_path):
    source, path = pretrained(tmp_path)
    adapted = fresh(5, path, "incremental")
    images = torch.rand(2, 3, 32, 32)
    source.eval(), adapted.eval()
    torch.testing.assert_close(adapted(images), source(images), rtol=0, atol=1e-6)
    source.train(), adapted.train()
    torch.testing.assert_close(adapted(images), source(images), rtol=0, atol=1e-6)


def test_incremental_trains_only_mixes_stem_1x1_norm_and_head(tmp_path):
    _, path = pretrained(tmp_path)
    detector = fresh(10, path, "incremental")  # 5 pretrained maps -> K = 10: new head
    n3 = count_3x3(detector)
    trainable = {name for name, p in detector.named_parameters() if p.requires_grad}
    frozen = {name for name, p in detector.named_parameters() if not p.requires_grad}
    assert len(frozen) == n3 and all(name.endswith("parametrizations.weight.original") for name in frozen)
    assert sum(name.endswith(".mix") for name in trainable) == n3
    assert "stem.0.weight" in trainable and "head.weight" in trainable and "head.bias" in trainable
    assert "neck.1.weight" in trainable and "stem.1.weight" in trainable  # 1x1 conv, BN
    mixes = {n: p.detach().clone() for n, p in detector.named_parameters() if n.endswith(".mix")}
    originals = {n: p.detach().clone() for n, p in detector.named_parameters() if n in frozen}
    optimizer = torch.optim.Adam([p for p in detector.parameters() if p.requires_grad], lr=1e-2)
    detector(torch.rand(2, 3, 32, 32)).square().mean().backward()
    optimizer.step()
    params = dict(detector.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in originals.items())
    assert all(not torch.equal(params[n], v) for n, v in mixes.items())


def test_incremental_weight_is_mix_times_old(tmp_path):
    conv = nn.Conv2d(4, 6, 3)
    old = conv.weight.detach().clone()
    make_incremental(nn.Sequential(conv))
    with torch.no_grad():
        conv.parametrizations.weight[0].mix.copy_(torch.arange(36.0).reshape(6, 6))
    expected = torch.einsum("oi,ichw->ochw", torch.arange(36.0).reshape(6, 6), old)
    torch.testing.assert_close(conv.weight, expected)


def test_finetune_loads_everything_but_a_mismatched_head(tmp_path):
    source, path = pretrained(tmp_path)
    same = fresh(5, path, "finetune")
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), source.state_dict().values()))
    assert all(p.requires_grad for p in same.parameters())
    other = fresh(10, path, "finetune")
    torch.testing.assert_close(other.stem[0].weight, source.stem[0].weight)
    assert other.head.weight.shape[0] == 10


def test_scratch_ignores_the_checkpoint_with_a_warning(tmp_path):
    source, path = pretrained(tmp_path)
    with pytest.warns(UserWarning, match="ignoring detector.init"):
        detector = fresh(5, path, "scratch")
    assert not torch.equal(detector.stem[0].weight, source.stem[0].weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh(5, None, "scratch")


def test_errors_name_the_problem(tmp_path):
    _, path = pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"detector.channels: checkpoint 16, this run 32"):
        fresh(5, path, "incremental", channels=32)
    with pytest.raises(ValueError, match="needs a pretrained detector"):
        fresh(5, None, "finetune")
    with pytest.raises(ValueError, match="expected one of"):
        fresh(5, path, "partial")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        fresh(5, tmp_path / "missing.pt", "incremental")


def test_run_checkpoints_are_accepted_and_incremental_folded(tmp_path):
    source, path = pretrained(tmp_path)
    adapted = fresh(5, path, "incremental")
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if name.endswith(".mix"):
                p.mul_(0.5)
    run_ckpt = tmp_path / "run.pt"
    config = RunConfig(detector=DetectorConfig(**ARCH))
    model = {f"detector.{k}": v for k, v in adapted.state_dict().items()}
    atomic.save_torch(run_ckpt, {"model": model, "config": config.to_dict()})
    state, architecture = load_detector_checkpoint(run_ckpt)
    assert architecture["channels"] == 16
    plain = HourglassDetector(5, **ARCH)
    plain.load_state_dict(state)
    images = torch.rand(2, 3, 32, 32)
    plain.eval(), adapted.eval()
    torch.testing.assert_close(plain(images), adapted(images), rtol=1e-5, atol=1e-5)


def test_generative_method_applies_the_initialisation(tmp_path):
    from lmbench.generative import GenerativeMethod

    source, path = pretrained(tmp_path, num_maps=10)
    config = RunConfig(K=10, detector=DetectorConfig(**ARCH, init=str(path), adapt="incremental"))
    config.perceptual.backbone = "none"
    method = GenerativeMethod(config)
    images = torch.rand(2, 3, 32, 32)
    method.eval(), source.eval()
    torch.testing.assert_close(method.detector(images), source(images), rtol=0, atol=1e-6)
    assert config.to_dict()["detector"]["adapt"] == "incremental"


@pytest.mark.parametrize("method", ["baseline", "zhang", "supervised_sam", "supervised_laplacekl"])
def test_every_method_starts_its_detector_from_detector_init(tmp_path, method):
    from lmbench.registry import get_method

    source, path = pretrained(tmp_path, num_maps=5)
    config = RunConfig(method=method, K=5, detector=DetectorConfig(**ARCH, init=str(path), adapt="finetune"))
    config.perceptual.backbone = "none"
    built = get_method(method).builder(config)
    loaded = built.detector.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("head"):  # zhang's head has K + 1 maps: re-initialised
            torch.testing.assert_close(loaded[key], value)
