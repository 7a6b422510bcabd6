"""The one trainer every method uses.

Everything random in a step is a pure function of ``(seed, step)``: the batch indices
(an epoch-wise permutation) and the method's generator (warps, pairings). So a run resumed
from a checkpoint at step s replays exactly the steps an uninterrupted run would have,
and the checkpoint only needs the model, the optimizer and the step.

Under torchrun each process trains its rows of every global batch (lmbench.distributed);
only rank 0 writes the log and the checkpoints. :class:`TrainOptions` holds the CUDA
settings (bf16 autocast, channels_last, compile, prefetching), which ``lmbench bench`` can
reuse with :func:`prepare_method`, :func:`autocast_for` and :class:`BatchLoader`.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from lmbench import atomic, memory
from lmbench.averaging import WeightAverage
from lmbench.config import RunConfig
from lmbench.curve import due as curve_due
from lmbench.data import ImageSplit, to_normalized
from lmbench.distributed import SINGLE, World, rank_generator, wrap
from lmbench.method import LandmarkMethod

CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "metrics.jsonl"


class NonFiniteError(RuntimeError):
    """A loss term or a gradient became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator determined by (seed, step, stream) alone."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step) * 7 + stream)
    return g


def batch_indices(num_images: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the batch at ``step``: consecutive slices of one permutation per epoch."""
    per_epoch = max(num_images // batch_size, 1)
    epoch, position = divmod(step, per_epoch)
    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + 999_983 * (epoch + 1))
    permutation = torch.randperm(num_images, generator=g)
    return permutation[position * batch_size : (position + 1) * batch_size]


def learning_rate(config: RunConfig, step: int) -> float:
    o = config.optim
    if o.lr_decay_every <= 0:
        return o.lr
    return o.lr * o.lr_decay_factor ** (step // o.lr_decay_every)


def build_optimizer(method: LandmarkMethod, config: RunConfig) -> torch.optim.Optimizer:
    o = config.optim
    groups = method.parameter_groups() if not o.lr_scale else _scaled_groups(method, o.lr_scale)
    return torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def check_lr_scale(method: LandmarkMethod, lr_scale: dict[str, float]) -> None:
    """``optim.lr_scale`` names only the method's networks, each with a positive multiplier."""
    networks = method.networks()
    unknown = sorted(set(lr_scale) - set(networks))
    if unknown:
        raise ValueError(f"optim.lr_scale: {', '.join(map(repr, unknown))} is not a network of method "
                         f"{method.config.method!r} (its networks: {', '.join(networks)})")
    bad = {name: s for name, s in lr_scale.items() if isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0}
    if bad:
        raise ValueError(f"optim.lr_scale: multipliers must be positive numbers, got {bad}")


def _scaled_groups(method: LandmarkMethod, lr_scale: dict[str, float]) -> list[dict]:
    """One parameter group per network, each carrying its ``lr_scale`` (``optim.lr_scale``);
    trainable parameters outside the networks form a last group at scale 1."""
    check_lr_scale(method, lr_scale)
    networks = method.networks()
    trainable = [p for group in method.parameter_groups() for p in group["params"]]
    wanted, groups, seen = {id(p) for p in trainable}, [], set()
    for name, net in networks.items():
        params = [p for p in net.parameters() if id(p) in wanted and id(p) not in seen]
        seen.update(id(p) for p in params)
        groups.append({"params": params, "lr_scale": float(lr_scale.get(name, 1.0))})
    rest = [p for p in trainable if id(p) not in seen]
    if rest:
        groups.append({"params": rest, "lr_scale": 1.0})
    return [g for g in groups if g["params"]]


@dataclass
class TrainResult:
    steps: int
    train_seconds: float
    images_per_second: float
    final_loss: float


def save_checkpoint(run_dir: Path, method, optimizer, step: int, train_seconds: float, config: RunConfig,
                    average: WeightAverage | None = None) -> None:
    state = {
        "step": step,
        "train_seconds": train_seconds,
        "model": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state()}
        | ({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}),
        "config": config.to_dict(),
    }
    if average is not None:
        state.update(average.state_dict())
    atomic.save_torch(run_dir / CHECKPOINT, state)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise RuntimeError(f"{path}: cannot load checkpoint ({type(error).__name__}: {error})") from error


def _truncate_log(path: Path, last_step: int) -> None:
    """Keep the log lines up to ``last_step`` (the checkpoint a run resumes from, or 0).

    A killed run may have logged steps after its last checkpoint, or died in the middle of
    a line; both are dropped so that the resumed log reads like an uninterrupted one.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if record.get("step", math.inf) <= last_step:
            kept.append(line)
    atomic.write_text(path, "".join(line + "\n" for line in kept))


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Delete ``.checkpoint.pt.*.tmp`` files left by a write that was killed (never read)."""
    for stale in run_dir.glob(f".{CHECKPOINT}.*.tmp"):
        stale.unlink(missing_ok=True)


def _finite_terms(terms: dict[str, torch.Tensor], step: int, world: World) -> dict[str, torch.Tensor]:
    """The terms' values (averaged over processes), or NonFiniteError naming step and term.

    Averaging first makes every process see the same values, so all of them stop together.
    """
    names = list(terms)
    values = world.mean(torch.stack([terms[name].detach().float().reshape(()) for name in names]))
    for name, value in zip(names, values):
        if not torch.isfinite(value):
            raise NonFiniteError(f"step {step}: loss term {name!r} is {value.item()}")
    return dict(zip(names, values))


@dataclass
class TrainOptions:
    """How the trainer runs on the device (not what it computes, up to rounding).

    ``amp``: bf16 autocast (CUDA only). ``channels_last``: NHWC networks and inputs (None:
    on for CUDA). ``compile``: ``torch.compile`` of each network (state-dict keys unchanged).
    ``prefetch``: gather and copy the next batch on a background thread and a side CUDA
    stream while the current step runs (CUDA only; on the CPU it would compete for cores).
    ``keep_freed_memory``: on the CPU, keep freed activation memory in the process for the next
    step instead of unmapping it (glibc; :mod:`lmbench.memory`).
    """

    amp: bool = True
    channels_last: bool | None = None
    compile: bool = False
    prefetch: bool = True
    keep_freed_memory: bool = True

    def effective(self, device: torch.device) -> dict:
        """The settings as they apply on ``device`` (what bench and config.json report)."""
        cuda = device.type == "cuda"
        return {
            "amp": "bf16" if self.amp and cuda else "off",
            "channels_last": bool(cuda if self.channels_last is None else self.channels_last),
            "compile": self.compile,
            "prefetch": self.prefetch and cuda,
            "keep_freed_memory": self.keep_freed_memory and device.type == "cpu" and memory.available(),
        }


def autocast_for(device: torch.device, amp: bool = True):
    """bf16 autocast on CUDA (unless ``amp`` is off), a disabled context elsewhere."""
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type if device.type in ("cpu", "cuda") else "cpu", enabled=False)


def prepare_method(method: LandmarkMethod, device: torch.device, options: TrainOptions) -> None:
    """Move ``method`` to ``device`` in training mode, NHWC and compiled as ``options`` say."""
    settings = options.effective(device)
    if settings["keep_freed_memory"]:
        memory.keep_freed_memory()
    method.to(device).train()
    if settings["channels_last"]:
        method.to(memory_format=torch.channels_last)
    if settings["compile"]:
        for net in method.networks().values():
            net.compile()  # in place: parameter names and checkpoints stay the same


class BatchLoader:
    """The batches of every step for this process: its rows of the global batch.

    ``get(step)`` returns the keyword arguments of :func:`train_step` (``images`` and, as
    the method needs them, ``points`` and ``extra_images``). With ``prefetch`` on CUDA the
    next step's batch is gathered, pinned and copied on a side stream by a background
    thread while the current step computes; batches are pure functions of the step, so
    prefetching changes nothing but the timing.
    """

    def __init__(self, method, data: ImageSplit, config: RunConfig, device: torch.device, *,
                 rows: slice = slice(None), extra: ImageSplit | None = None, options: TrainOptions | None = None):
        settings = (options or TrainOptions()).effective(device)
        self.method, self.data, self.extra, self.config, self.device, self.rows = method, data, extra, config, device, rows
        self.channels_last = settings["channels_last"]
        self.pending: tuple[int, Future] | None = None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="lmbench-prefetch") if settings["prefetch"] else None
        self.stream = torch.cuda.Stream(device) if self.pool else None

    def load(self, step: int) -> dict[str, torch.Tensor]:
        config, data = self.config, self.data
        index = batch_indices(len(data), config.batch_size, config.seed, step)[self.rows]
        batch = {"images": data.batch(index, self.device)}
        if self.method.uses_labels:
            points = to_normalized(torch.from_numpy(data.points[index.numpy()]).float(), data.image_size)
            batch["points"] = points.to(self.device)
        if self.method.extra_split is not None:
            extra_index = batch_indices(len(self.extra), config.batch_size, config.seed, step)[self.rows]
            batch["extra_images"] = self.extra.batch(extra_index, self.device)
        if self.channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in batch.items()}
        return batch

    def _load_on_side_stream(self, step: int) -> dict[str, torch.Tensor]:
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            batch = self.load(step)
        self.stream.synchronize()  # the background thread waits, not the training loop
        return batch

    def get(self, step: int) -> dict[str, torch.Tensor]:
        if self.pool is None:
            return self.load(step)
        if self.pending is not None and self.pending[0] == step:
            batch = self.pending[1].result()
            for tensor in batch.values():  # allocated on the side stream, used on the main one
                tensor.record_stream(torch.cuda.current_stream(self.device))
        else:
            batch = self.load(step)
        self.pending = (step + 1, self.pool.submit(self._load_on_side_stream, step + 1))
        return batch

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def train_step(
    method: LandmarkMethod,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    config: RunConfig,
    step: int,
    *,
    autocast=None,
    points: torch.Tensor | None = None,
    extra_images: torch.Tensor | None = None,
    losses: Callable[..., dict[str, torch.Tensor]] | None = None,
    world: World = SINGLE,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step: the step's learning rate, the method's loss terms (randomness
    from ``step_generator(seed, step)``), backward, L2 clipping per network, optimizer step.

    ``losses`` computes the terms (the DDP wrapper from :func:`lmbench.distributed.wrap`
    under torchrun; ``method.losses`` by default). Returns (loss, terms), detached and
    averaged over processes. Raises NonFiniteError naming the step and the term or network
    that is not finite, before the optimizer touches the weights.
    """
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(config, step) * group.get("lr_scale", 1.0)
    labels = {} if points is None else {"points": points}
    if extra_images is not None:
        labels["extra_images"] = extra_images
    if world.distributed and not method.slices_randomness:
        generator = rank_generator(config.seed, step, world.rank)
    else:
        generator = step_generator(config.seed, step)
    with autocast if autocast is not None else autocast_for(images.device):
        terms = (losses or method.losses)(images, generator, **labels)
    values = _finite_terms(terms, step, world)
    loss = sum(terms.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip = config.optim.grad_clip
    for name, net in method.networks().items():
        params = [p for p in net.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
        if not torch.isfinite(norm):  # gradients are already averaged: every process agrees
            raise NonFiniteError(f"step {step}: the gradient of network {name!r} is not finite (loss {loss.item():.4g})")
    optimizer.step()
    return sum(values.values()), values


def train(
    method: LandmarkMethod,
    data: ImageSplit,
    config: RunConfig,
    run_dir: Path,
    *,
    device: torch.device,
    resume: bool = False,
    on_step: Callable[[int, dict], None] | None = None,
    extra: ImageSplit | None = None,
    options: TrainOptions | None = None,
    world: World = SINGLE,
    probe: Callable[[], dict] | None = None,
) -> TrainResult:
    """Train ``method`` on ``data`` for ``config.steps`` steps, checkpointing into ``run_dir``.

    ``extra``: the split named by ``method.extra_split`` (e.g. unlabelled images), batched like
    ``data`` and passed as ``losses(..., extra_images=...)``. ``world``: this process's
    place under torchrun (:func:`lmbench.distributed.start`); only rank 0 writes the log and
    the checkpoints. A NonFiniteError leaves the last checkpoint as it was. ``probe``: scores
    the detector when :func:`lmbench.curve.due` says so (rank 0); its fields join that step's
    log record and its time is left out of the training time (lmbench.curve).
    """
    if method.extra_split is not None and extra is None:
        raise ValueError(f"method {type(method).__name__} needs split {method.extra_split!r} too: pass train(..., extra=)")
    options = options or TrainOptions()
    method.to(device)
    start_step, previous_seconds, state = 0, 0.0, None
    if resume and (run_dir / CHECKPOINT).exists():
        state = load_checkpoint(run_dir / CHECKPOINT)  # on the CPU: RNG states must stay there
        method.load_state_dict(state["model"])
        torch.set_rng_state(state["rng"]["torch"])
        start_step, previous_seconds = state["step"], state["train_seconds"]
    if world.is_main:
        _truncate_log(run_dir / TRAIN_LOG, start_step)
        _remove_stale_temporaries(run_dir)
    prepare_method(method, device, options)
    rows = world.rows(config.batch_size)
    if world.distributed:
        method.sample_slice, method.global_batch = rows, config.batch_size
    losses = wrap(method, world, device)
    optimizer = build_optimizer(method, config)
    if state is not None:
        scales = [group.get("lr_scale", 1.0) for group in optimizer.param_groups]
        saved_groups = len(state["optimizer"]["param_groups"])
        if saved_groups != len(scales):
            raise ValueError(
                f"{run_dir}: the checkpoint's optimizer has {saved_groups} parameter group(s), this config "
                f"{len(scales)}: --resume can change optim.lr_scale's multipliers but not switch it on or off; "
                "resume with the run's optim.lr_scale or start a new run")
        optimizer.load_state_dict(state["optimizer"])
        for group, scale in zip(optimizer.param_groups, scales):  # this config's multipliers, not the saved ones
            group["lr_scale"] = scale
    average = WeightAverage(method, config.optim.ema_decay) if config.optim.ema_decay > 0 else None
    if state is not None and (average is not None) != ("average" in state):
        raise ValueError(
            f"{run_dir}: the checkpoint was trained {'with' if 'average' in state else 'without'} a weight average "
            "(optim.ema_decay); --resume can change the decay but not switch the average on or off")
    if state is not None and average is not None:
        average.load_state_dict(state)
    loader = BatchLoader(method, data, config, device, rows=rows, extra=extra, options=options)
    autocast = autocast_for(device, options.amp)
    log_path = run_dir / TRAIN_LOG
    t0 = time.perf_counter()
    window_start, window_images, last_loss = t0, 0, math.nan
    probing = 0.0  # seconds spent in probes, left out of the training time
    saved = start_step if state is not None else None
    try:
        for step in range(start_step, config.steps):
            batch = loader.get(step)
            try:
                loss, terms = train_step(method, optimizer, config=config, step=step, autocast=autocast,
                                         losses=losses, world=world, **batch)
                if average is not None:
                    average.update()
            except NonFiniteError as error:
                kept = f"the last good checkpoint (step {saved}) is kept in {run_dir / CHECKPOINT}" if saved is not None \
                    else "no checkpoint had been written yet"
                raise NonFiniteError(f"{error}; training stopped and {kept} (a lower learning rate, "
                                     f"--set optim.lr=..., or gradient clipping often helps)") from None
            window_images += config.batch_size
            last_loss = loss.item()
            done = step + 1
            if not world.is_main:
                continue
            probe_now = probe is not None and curve_due(config, done)
            if done % config.log_every == 0 or done == config.steps or probe_now:
                now = time.perf_counter()
                record = {
                    "step": done,
                    "loss": last_loss,
                    **{name: round(value.item(), 6) for name, value in terms.items()},
                    "lr": optimizer.param_groups[0]["lr"],
                    "images_per_second": window_images / max(now - window_start, 1e-9),
                    "train_seconds": previous_seconds + now - t0 - probing,
                }
                if probe_now:
                    with average.swapped_in() if average is not None else nullcontext():
                        record.update(probe())
                    record["probe_seconds"] = round(time.perf_counter() - now, 3)
                    probing += time.perf_counter() - now
                    now = time.perf_counter()
                with open(log_path, "a", encoding="utf-8") as log:
                    log.write(json.dumps(record) + "\n")
                window_start, window_images = now, 0
                if on_step:
                    on_step(done, record)
            elif on_step:
                on_step(done, {"step": done, "loss": last_loss})
            if done % config.checkpoint_every == 0 or done == config.steps:
                save_checkpoint(run_dir, method, optimizer, done, previous_seconds + time.perf_counter() - t0 - probing,
                                config, average)
                saved = done
    finally:
        loader.close()
        method.sample_slice = method.global_batch = None
    if average is not None:  # what is evaluated from here on; the checkpoint keeps both
        average.copy_to_method()
    elapsed = time.perf_counter() - t0 - probing
    steps_run = config.steps - start_step
    if steps_run == 0 and (run_dir / CHECKPOINT).exists():
        elapsed = 0.0
    return TrainResult(
        steps=config.steps,
        train_seconds=previous_seconds + elapsed,
        images_per_second=steps_run * config.batch_size / elapsed if elapsed > 0 else 0.0,
        final_loss=last_loss,
    )
