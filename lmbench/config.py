"""Every setting of a run, as dataclasses saved verbatim to ``config.json``."""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class DetectorConfig:
    channels: int = 96
    depth: int = 3
    stem_channels: int = 64
    # Multiplies the head's initial weights (1 = PyTorch's default init). The generative
    # methods use 0.5 (lmbench.generative.GENERATIVE_HEAD_INIT_GAIN): flatter untrained maps,
    # so the softargmax's gradient reaches more pixels than the few a random network
    # favours (reports/findings.md, "Flatter initial maps").
    head_init_gain: float = 1.0
    init: str | None = None  # pretrained detector checkpoint (--detector-init), see lmbench.adapt
    adapt: str = "scratch"  # incremental | finetune | scratch


@dataclass
class BottleneckConfig:
    temperature: float = 0.1  # softmax(x / T); Li et al.'s beta = 1 / T
    # Gaussian std in heatmap pixels. Sanchez: 0.5 at 32 x 32 maps; lmbench's 64-px default
    # (16 x 16 maps) uses 2.0, which discovers landmarks several times faster on a CPU budget
    # (reports/findings.md, "Why the CPU defaults differ from the papers").
    sigma: float = 2.0


@dataclass
class GeneratorConfig:
    conv_dim: int = 16
    res_blocks: int = 4
    # BatchNorm over [features; heatmaps] before the residual blocks, as in Sanchez's and Li et
    # al.'s code: it brings the Gaussian maps (std ~0.2 at sigma 2) to the scale of the image
    # features (reports/findings.md, "The generator's input normalisation"). Runs saved before it existed
    # load with False, their architecture.
    input_norm: bool = True


@dataclass
class PerceptualConfig:
    backbone: str = "vgg16"  # vgg16 (the papers') | alexnet (cheaper, but weak at 64 px) | none
    # None: the backbone's default layers (vgg16: the papers' relu1_2/2_2/3_3/4_3). lmbench's
    # CPU default stops at relu3_3, 15 % cheaper per step (reports/findings.md, "Why the CPU defaults differ").
    layers: list[str] | None = field(default_factory=lambda: ["relu1_2", "relu2_2", "relu3_3"])
    weights: str | None = None  # explicit --perceptual-weights path
    imagenet_normalize: bool = False  # the original feeds [0, 1] images without mean/std
    weight: float = 1.0
    pixel_weight: float = 1.0


@dataclass
class WarpConfig:
    """The random warp that turns x into x' for the generative methods (and its similarity
    part, which the supervised references and pretraining use as augmentation)."""

    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    translation: float = 0.1  # normalised units ([-1, 1] image)
    # A thin-plate-spline jitter after the similarity, for the generative methods' pairs only
    # (supervised augmentation and pretraining use the similarity alone): N(0, tps_sigma^2)
    # offsets (normalised units) of a tps_grid x tps_grid control lattice. 0 gives the papers'
    # similarity pairs; lmbench's CPU default 0.05 makes the generator need points on the
    # face's parts, not just the head's pose (reports/findings.md, "Pairs with a thin-plate-spline jitter").
    tps_sigma: float = 0.05
    tps_grid: int = 5
    # Where a method compares its output with the warped x', the reconstruction loss skips the
    # pixels that the warp filled from outside the source image (border padding): otherwise the
    # generator can only draw that padding if the landmarks track the image's frame, and the
    # detector learns to put them there (reports/findings.md, "Padding of the warped target"). The baseline's
    # target is the unwarped x, so it is unaffected.
    mask_padding: bool = True


@dataclass
class OptimConfig:
    lr: float = 1e-3
    # Sanchez's and Li et al.'s Adam: no momentum. The four generative methods default to
    # (0.5, 0.9) (lmbench.generative.GENERATIVE_BETAS), zhang to TF-Adam's (0.9, 0.999).
    betas: tuple[float, float] = (0.0, 0.9)
    # Sanchez: 5e-4. Adam's coupled L2 at that strength shrinks the detector's weights ~25x in
    # 1,000 steps and stalls discovery in short runs, so lmbench's default is 0.
    weight_decay: float = 0.0
    lr_decay_every: int = 0  # steps; 0 = no decay
    lr_decay_factor: float = 0.1
    grad_clip: float = 1.0  # L2 norm per network; 0 = off
    # Per-network multipliers of the learning rate, e.g. {"detector": 3.0} (the original Li et al.
    # code's separate --lr_fan / --lr_gan); a network not named keeps lr. Empty: one group.
    lr_scale: dict[str, float] = field(default_factory=dict)
    # Evaluate an exponential moving average of the trained weights (lmbench.averaging); 0 = off,
    # the last iterate is evaluated.
    ema_decay: float = 0.0


@dataclass
class ProtocolConfig:
    """The evaluation protocol (see lmbench.evaluate; named presets in lmbench.protocols)."""

    name: str = "lmbench"
    regressor: str = "ridge"  # ridge | lstsq
    ridge_lambda: float = 1e-4  # relative to max(X^T X), as in Sanchez's code
    bias: bool = True
    fit_split: str = "reg_train"
    test_split: str = "test"
    # pixels | heatmap | normalized | unit_centered | original (see lmbench.evaluate.COORDINATE_SPACES)
    coordinates: str = "pixels"
    heatmap_size: int = 32  # grid size of the "heatmap" coordinate space
    test_crop: str = "fixed"  # fixed | gt_box (gt_box leaks test annotations into the input crop)
    sweep_sizes: tuple[int, ...] = (1, 5, 10, 100, 500, 1000, 5000)  # N of Table II; "all" is always added
    repeats: int = 5  # seeded random subsets per N < all
    seed: int = 0  # seed of the subsets
    floors: bool = True  # also score an untrained (seeded) detector of the same architecture


@dataclass
class RunConfig:
    method: str = "baseline"
    K: int = 10
    dataset: str = "synthetic"
    data_root: str | None = None
    steps: int = 1000
    batch_size: int = 16
    image_size: int = 64
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # 0: torch's default
    checkpoint_every: int = 250
    log_every: int = 25
    eval_every: int = 0  # steps between learning-curve probes (lmbench.curve); 0 = none
    eval_batch_size: int = 64
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    warp: WarpConfig = field(default_factory=WarpConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        return _from_dict(cls, upgrade_saved_config(data))


#: Methods with ``method_options.routing`` (lmbench.methods.inter_intra), for old saved configs.
ROUTED_METHODS = ("inter_subject", "cycle", "inter_intra")


def upgrade_saved_config(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the settings it predates filled in as the run actually used them."""
    warp = data.get("warp")
    if isinstance(warp, dict) and "tps_sigma" not in warp:
        # Saved before the TPS jitter existed: those runs trained on similarity pairs.
        data = {**data, "warp": {"tps_grid": WarpConfig.tps_grid, **warp, "tps_sigma": 0.0}}
        warp = data["warp"]
    if isinstance(warp, dict) and "mask_padding" not in warp:
        # Saved before the padding mask existed: their loss counted the padding of x'.
        data = {**data, "warp": {**warp, "mask_padding": False}}
    generator = data.get("generator")
    if isinstance(generator, dict) and "input_norm" not in generator:
        # Saved before the generator normalised its concatenated input: those runs had no such layer.
        data = {**data, "generator": {**generator, "input_norm": False}}
    options = data.get("method_options")
    if data.get("method") in ROUTED_METHODS and isinstance(options, dict) and "routing" not in options:
        # Saved before Li et al.'s variants could run their passes separately: they were batched.
        data = {**data, "method_options": {**options, "routing": "batched"}}
        options = data["method_options"]
    if data.get("method") == "inter_subject" and isinstance(options, dict) and "pairs" not in options:
        # Saved before inter_subject drew the originals' two views: x was the undeformed image.
        data = {**data, "method_options": {**options, "pairs": "warp"}}
        options = data["method_options"]
    if data.get("method") == "cycle" and isinstance(options, dict) and "backward" not in options:
        # Saved before cycle's backward path went through the auxiliary image: the baseline reversed.
        data = {**data, "method_options": {**options, "backward": "direct"}}
    optim = data.get("optim")
    if isinstance(optim, dict) and "ema_decay" not in optim:
        # Saved before the weight average existed: their last iterate was evaluated.
        data = {**data, "optim": {**optim, "ema_decay": 0.0}}
    return data


def _from_dict(cls, data: dict[str, Any]):
    """Rebuild nested dataclasses; unknown keys are an error naming the key."""
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} setting(s): {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in data.items():
        default = known[name].default_factory if known[name].default_factory is not dataclasses.MISSING else None
        if default is not None and dataclasses.is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = _from_dict(default, value)
        elif isinstance(value, list) and isinstance(getattr(cls(), name, None), tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def cpu_description() -> dict[str, str]:
    """The CPU a run computed on: its model and the instruction set torch's kernels use.

    Recorded because a run is bit-repeatable only on the same kind of CPU: oneDNN picks
    other kernels for AVX-512 than for AVX2, their float32 sums round differently, and
    training amplifies that (README, "Reproducibility").
    """
    import torch

    model = platform.processor() or "unknown"
    seen: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                seen.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" in seen:
        model = seen["model name"]
        if "cpu family" in seen and "model" in seen:
            model += f" (family {seen['cpu family']}, model {seen['model']})"
    return {"cpu": model, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def environment() -> dict[str, str]:
    """Package versions, platform and CPU, recorded with every run."""
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "platform": platform.platform(), **cpu_description()}
    for package in ("lmbench", "torch", "numpy", "scipy", "pandas", "pluggy", "kornia", "pillow"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def apply_override(config: RunConfig, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override (value parsed as JSON, else kept as a string).

    ``dataset_options`` and ``method_options`` accept any key; elsewhere the key must exist.
    """
    import json

    if "=" not in assignment:
        raise ValueError(f"--set {assignment!r}: expected KEY=VALUE, e.g. detector.channels=128")
    key, raw = assignment.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    *parents, leaf = key.strip().split(".")
    target: Any = config
    for i, part in enumerate(parents):
        if isinstance(target, dict):
            target = target.setdefault(part, {})
        elif dataclasses.is_dataclass(target) and hasattr(target, part):
            target = getattr(target, part)
        else:
            raise ValueError(f"--set {assignment!r}: unknown setting {'.'.join(parents[: i + 1])!r}")
    if isinstance(target, dict):
        target[leaf] = value
        return
    if not (dataclasses.is_dataclass(target) and leaf in {f.name for f in fields(target)}):
        raise ValueError(f"--set {assignment!r}: unknown setting {key!r}")
    current = getattr(target, leaf)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    elif isinstance(current, float) and isinstance(value, int):
        value = float(value)
    elif current is not None and value is not None and not isinstance(value, type(current)):
        raise ValueError(f"--set {assignment!r}: {key} expects {type(current).__name__}, got {value!r}")
    setattr(target, leaf, value)
