"""``lmbench bench``: training throughput of any registered method, as one JSON line.

Times the trainer's own step (:func:`lmbench.train.train_step`: the method's losses,
backward, per-network clipping, optimizer step) on in-memory random images, after
untimed warm-up steps, so the figure is the model's cost and not the data pipeline's.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time

import click
import numpy as np
import torch

from lmbench import registry
from lmbench.config import OptimConfig, RunConfig, apply_override
from lmbench.data import ImageSplit, to_normalized
from lmbench.generative import GENERATIVE_STEPS
from lmbench.hookspecs import hookimpl

#: Architecture presets. ``paper``: Sanchez & Tzimiropoulos / Li et al.'s networks (hourglass
#: 256 channels depth 4, StarGAN generator conv_dim 32 with 6 residual blocks, VGG-16
#: relu1_2/2_2/3_3/4_3). ``small``: lmbench's RunConfig defaults.
PRESETS = ("paper", "small")


def bench_config(
    method: str,
    *,
    preset: str = "small",
    image_size: int = 64,
    batch_size: int = 16,
    K: int = 10,
    device: str = "auto",
    threads: int = 0,
    perceptual: str | None = None,
    perceptual_weights: str | None = None,
    overrides: tuple[str, ...] = (),
) -> RunConfig:
    """The RunConfig that ``lmbench bench`` builds the method from (``overrides``: ``--set``
    assignments, applied last)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
    config = RunConfig(method=method, K=K, image_size=image_size, batch_size=batch_size, device=device, threads=threads)
    defaults = registry.get_method(method).config_defaults
    for key, value in defaults.items():  # the method's own defaults, as `lmbench run` applies them
        apply_override(config, f"{key}={json.dumps(value)}")
    if preset == "paper":
        config.detector.channels, config.detector.depth, config.detector.stem_channels = 256, 4, 64
        config.generator.conv_dim, config.generator.res_blocks = 32, 6
        config.generator.input_norm = True  # the original's BatchNorm over [features; heatmaps]
        config.warp.tps_sigma = 0.0  # the papers' pairs: a similarity, no TPS jitter
        config.warp.mask_padding = False  # the papers' loss counts x''s padding too
        config.detector.head_init_gain = 1.0  # the original's (PyTorch's) initialisation
        if method in GENERATIVE_STEPS:  # Sanchez's and Li et al.'s Adam, without momentum
            config.optim.betas = OptimConfig().betas
            config.optim.ema_decay = OptimConfig().ema_decay  # and no weight average (bench times none)
        if "perceptual.backbone" not in defaults:  # e.g. zhang's original has no perceptual loss
            config.perceptual.backbone, config.perceptual.layers = "vgg16", None
    if perceptual:
        config.perceptual.backbone, config.perceptual.layers = perceptual, None
    if perceptual_weights:
        config.perceptual.weights = str(perceptual_weights)
    for assignment in overrides:
        apply_override(config, assignment)
    return config


def random_split(n: int, image_size: int, seed: int, points: int = 5) -> ImageSplit:
    """In-memory random uint8 images (and random points, for methods that use labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
    coords = rng.uniform(0, image_size, (n, points, 2)).astype(np.float32)
    return ImageSplit(images, coords)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def run_bench(config: RunConfig, *, steps: int = 10, warmup: int = 2, preset: str = "",
              keep_freed_memory: bool = True) -> dict:
    """Build ``config.method`` from the registry and time ``steps`` training steps
    (``keep_freed_memory``: as the trainer does by default on the CPU, :mod:`lmbench.memory`)."""
    from lmbench import memory
    from lmbench.runner import check_image_size
    from lmbench.train import autocast_for, batch_indices, build_optimizer, resolve_device, train_step

    if steps < 1 or warmup < 0:
        raise ValueError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    device = resolve_device(config.device)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    mmap_threshold = memory.keep_freed_memory() if keep_freed_memory and device.type == "cpu" else 0
    torch.manual_seed(config.seed)
    method = registry.get_method(config.method).builder(config).to(device).train()
    check_image_size(config, method)
    optimizer = build_optimizer(method, config)
    data = random_split(4 * config.batch_size, config.image_size, config.seed)
    autocast = autocast_for(device)

    def one_step(step: int) -> None:
        index = batch_indices(len(data), config.batch_size, config.seed, step)
        images = data.batch(index, device)
        points = None
        if method.uses_labels:
            points = to_normalized(torch.from_numpy(data.points[index.numpy()]), data.image_size).to(device)
        loss, _ = train_step(method, optimizer, images, config, step, autocast=autocast, points=points)
        loss.item()  # waits for the device, as the trainer's logging does

    for step in range(warmup):
        one_step(step)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times, faults_before = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for step in range(warmup, warmup + steps):
        t0 = time.perf_counter()
        one_step(step)
        times.append(time.perf_counter() - t0)
    page_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    seconds_per_step = sum(times) / len(times)
    return {
        "method": config.method,
        "preset": preset,
        "image_size": config.image_size,
        "batch_size": config.batch_size,
        "K": config.K,
        "perceptual": config.perceptual.backbone,
        "steps": steps,
        "warmup": warmup,
        "images_per_second": round(config.batch_size / seconds_per_step, 3),
        "seconds_per_step": round(seconds_per_step, 4),
        "seconds_per_step_median": round(statistics.median(times), 4),
        "seconds_per_step_min": round(min(times), 4),
        "peak_memory_mb": round(_peak_memory_mb(device), 1),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "keep_freed_memory": mmap_threshold > 0,
        "page_faults_per_step": round(page_faults / steps),  # minor faults of this process (all threads)
        "torch": torch.__version__,
    }


@click.command("bench")
@click.option("--method", required=True, help="A registered method (see `lmbench methods`).")
@click.option("--preset", type=click.Choice(PRESETS), default="paper", show_default=True,
              help="paper: the original architecture; small: lmbench's default sizes.")
@click.option("--image-size", type=click.IntRange(16, 1024), default=64, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--steps", type=click.IntRange(1), default=10, show_default=True, help="Timed steps.")
@click.option("--warmup", type=click.IntRange(0), default=2, show_default=True, help="Untimed steps first.")
@click.option("--K", "K", type=click.IntRange(1, 512), default=10, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(0), default=0, help="CPU threads (0: torch's default).")
@click.option("--perceptual", type=click.Choice(["vgg16", "alexnet", "none"]),
              help="Override the preset's perceptual backbone.")
@click.option("--perceptual-weights", type=click.Path(exists=True),
              help="Backbone weights: a .pth file or a directory with the standard files.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config setting after the preset, as for `lmbench run` "
                   "(e.g. method_options.routing=separate). Repeatable.")
@click.option("--keep-freed-memory/--no-keep-freed-memory", default=True, show_default=True,
              help="CPU: keep freed memory for the next step instead of unmapping it, as `lmbench run` does.")
def bench_command(method, preset, image_size, batch_size, steps, warmup, K, device, threads, perceptual,
                  perceptual_weights, overrides, keep_freed_memory) -> None:
    """Time training steps of a method and print one JSON line (images/s, s/step, peak memory)."""
    from lmbench.cli import method_name

    name = method_name(click.get_current_context(), None, method)
    try:
        config = bench_config(name, preset=preset, image_size=image_size, batch_size=batch_size, K=K,
                              device=device, threads=threads, perceptual=perceptual,
                              perceptual_weights=perceptual_weights, overrides=overrides)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--set") from None
    try:
        result = run_bench(config, steps=steps, warmup=warmup, preset=preset, keep_freed_memory=keep_freed_memory)
    except ValueError as error:  # e.g. a method option the builder rejects; the message names it
        raise click.ClickException(str(error)) from None
    if overrides:
        result["overrides"] = list(overrides)
    click.echo(json.dumps(result))


@hookimpl
def register_commands(cli):
    if "bench" not in cli.commands:
        cli.add_command(bench_command)
