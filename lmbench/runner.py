"""``lmbench run`` and ``lmbench eval``: build, train, evaluate and write the run directory.

The run directory contract::

    config.json     every setting, the protocol, the environment (package versions)
    metrics.json    method, K, dataset, nme, nme_mean_shape, steps, train_seconds, ...
    checkpoint.pt   model and optimizer state, step, RNG state (weights_only loadable)
    metrics.jsonl   the training log, one JSON object per logged step
    landmarks.png   test faces with the discovered and the regressed points
    reconstructions.png  the method's passes on those faces (inputs, intermediate images, outputs)
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lmbench import atomic, distributed, registry
from lmbench.config import RunConfig, environment
from lmbench.data import DatasetSplits
from lmbench.averaging import check_decay, evaluation_state
from lmbench.curve import make_probe, write_curve
from lmbench.evaluate import dataset_crop, direct_extras, evaluate_protocols, metrics_record, write_evaluation
from lmbench.evaluate_direct import evaluate_direct
from lmbench.method import LandmarkMethod
from lmbench.train import CHECKPOINT, TRAIN_LOG, TrainOptions, check_lr_scale, load_checkpoint, resolve_device, train
from lmbench.viz import landmark_figure, reconstruction_figure

CONFIG = "config.json"
METRICS = "metrics.json"
FIGURE = "landmarks.png"
RECONSTRUCTIONS = "reconstructions.png"
#: Test faces in both figures.
FIGURE_FACES = 8


class RunError(RuntimeError):
    """A run cannot start or continue (bad directory, missing data, ...)."""


def default_run_dir(config: RunConfig, root: str | Path = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{config.method}-K{config.K}-{config.dataset}-s{config.seed}-{stamp}"


def build_dataset(config: RunConfig) -> DatasetSplits:
    spec = registry.get_dataset(config.dataset)
    root = spec.find_root(config.data_root)
    if not spec.embedded and root is None:
        looked = ", ".join(str(r) for r in spec.candidate_roots(config.data_root)) or "(nowhere: pass --data-root)"
        raise RunError(
            f"dataset {spec.name!r}: data not found; looked in {looked}. Expected layout: {spec.layout}"
        )
    return spec.builder(root=root, image_size=config.image_size, seed=config.seed, **config.dataset_options)


def build_method(config: RunConfig) -> LandmarkMethod:
    return registry.get_method(config.method).builder(config)


def unannotated_splits(config: RunConfig, data: DatasetSplits) -> list[str]:
    """The protocol's fit and test splits that have no annotated points (nothing to score)."""
    wanted = dict.fromkeys((config.protocol.fit_split, config.protocol.test_split))
    return [s for s in wanted if data.split(s).points is None or len(data.split(s)) == 0]


def check_protocol_fits(config: RunConfig, data: DatasetSplits) -> None:
    """Fail early when the evaluation protocol needs something the dataset does not provide."""
    protocol = config.protocol
    if protocol.coordinates == "original" and data.info.get("original_coordinates") != "input":
        lacking = [s for s in (protocol.fit_split, protocol.test_split)
                   if getattr(data.split(s), "to_original", None) is None]
        if lacking:
            raise RunError(f"protocol {protocol.name!r} measures errors in original-image pixels, but dataset "
                           f"{config.dataset!r} does not record the mapping back to its original images "
                           f"(split {lacking[0]!r}); choose another --protocol")


def check_image_size(config: RunConfig, method: LandmarkMethod) -> None:
    """Fail before training when a network cannot take ``config.image_size`` (for example the
    hourglass, whose input sides must be multiples of 4 * 2**depth)."""
    for module in method.modules():
        multiple = getattr(module, "size_multiple", None)
        if multiple and config.image_size % multiple:
            lower = config.image_size // multiple * multiple
            nearest = " or ".join(str(s) for s in (lower, lower + multiple) if s > 0)
            raise RunError(f"--image-size {config.image_size}: {type(module).__name__} needs a multiple of "
                           f"{multiple} (try {nearest}, or another detector.depth)")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _config_record(config: RunConfig, data: DatasetSplits, method: LandmarkMethod) -> dict:
    perceptual = getattr(method, "perceptual", None)
    return {
        **config.to_dict(),
        "dataset_info": data.info,
        "perceptual_weights_source": getattr(perceptual, "weights_source", None),
        "environment": environment(),
    }


def untrained_method(config: RunConfig, device) -> LandmarkMethod:
    """The floor: the same architecture, randomly initialised from the run's seed, never trained."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        method = build_method(config)
    return method.to(device).eval()


def rebuild_with_crop(config: RunConfig, test_crop: str) -> DatasetSplits:
    """The run's dataset prepared with another test crop (a protocol that requires it)."""
    from lmbench.protocols import crop_dataset_options

    options = crop_dataset_options(config.dataset_options, test_crop)
    return build_dataset(RunConfig.from_dict({**config.to_dict(), "dataset_options": options}))


def curve_probe(method, data: DatasetSplits, config: RunConfig, device):
    """The learning-curve probe of ``--eval-every`` (lmbench.curve), or None when it is off.

    The probes score the run's own protocol, on the dataset with the protocol's test crop
    (rebuilt once here if the run's dataset was prepared with another), as the final
    evaluation does."""
    if config.eval_every < 0:
        raise RunError(f"eval_every must be >= 0 (0: no learning curve), got {config.eval_every}")
    if config.eval_every == 0:
        return None
    unannotated = unannotated_splits(config, data)
    if unannotated:
        raise RunError(f"--eval-every needs annotations, and dataset {config.dataset!r} has none in split(s) "
                       f"{', '.join(unannotated)}; train without it and score the checkpoint with `lmbench eval`")
    recorded = dataset_crop(data)[0]
    if recorded is not None and recorded != config.protocol.test_crop:
        data = rebuild_with_crop(config, config.protocol.test_crop)
    return make_probe(method, data, config, device)


def evaluate_run(method, data: DatasetSplits, config: RunConfig, run_dir: Path, device, *,
                 protocols: list | None = None, floors: bool | None = None) -> dict:
    """Evaluate a trained method under the run's protocol (or ``protocols``); write evaluation.json,
    evaluation/<protocol>/*.csv and landmarks.png; return the entries of metrics.json."""
    method.eval()
    protocols = protocols or [config.protocol]
    if method.predicts_annotations:  # supervised references: scored as they are, no regressor
        results = {p.name: direct_extras(evaluate_direct(method.detect, data, p, spread=getattr(method, "heatmap_spread", None),
                                                         batch_size=config.eval_batch_size, device=device), data, p)
                   for p in protocols}
    else:
        floors = config.protocol.floors if floors is None else floors
        untrained = untrained_method(config, device) if floors else None

        results = evaluate_protocols(method.detect, data, protocols, rebuild=lambda crop: rebuild_with_crop(config, crop),
                                     untrained_detect=None if untrained is None else untrained.detect,
                                     batch_size=config.eval_batch_size, device=device)
    write_evaluation(run_dir, results)
    if config.protocol.name in results:
        result, test = results[config.protocol.name], data.split(config.protocol.test_split)
        landmark_figure(test.images[:FIGURE_FACES], result["discovered"][:FIGURE_FACES],
                        result["predictions"][:FIGURE_FACES], test.points[:FIGURE_FACES], run_dir / FIGURE)
        save_reconstructions(method, test, config, run_dir, device)
    return metrics_record(results, config.protocol.name)


def save_reconstructions(method, split, config: RunConfig, run_dir: Path, device) -> None:
    """reconstructions.png: the images of each pass of the method's loss (``LandmarkMethod.show``)
    on the first test faces, its warp and pairing drawn from the run's seed. Nothing for
    methods that show none, and under torchrun on CUDA, where BatchNorm is SyncBatchNorm and a
    training-mode pass on rank 0 alone would wait for the other processes (``lmbench eval RUN``
    draws it afterwards in one process)."""
    if distributed.syncs_batch_norm(method):
        return
    faces = split.batch(np.arange(min(FIGURE_FACES, len(split.images))), device)
    rows = method.reconstruction_rows(faces, config.seed)
    if rows:
        as_uint8 = [(label, images.permute(0, 2, 3, 1).mul(255).round().to(torch.uint8).numpy()) for label, images in rows]
        reconstruction_figure(as_uint8, run_dir / RECONSTRUCTIONS)


def run(
    config: RunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    on_step: Callable[[int, dict], None] | None = None,
    options: TrainOptions | None = None,
) -> dict:
    """Train then evaluate; returns the metrics written to metrics.json.

    Under torchrun every process trains its rows of each batch (lmbench.distributed); rank 0
    alone writes the run directory and evaluates while the others wait, and they return {}.
    """
    if run_dir.exists() and (run_dir / CHECKPOINT).exists() and not resume:
        raise RunError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if resume and (run_dir / CONFIG).exists():
        saved = atomic.read_json(run_dir / CONFIG)
        mismatched = [k for k in ("method", "K", "dataset", "seed", "batch_size", "image_size")
                      if saved.get(k) != getattr(config, k)]
        if mismatched:
            raise RunError(f"{run_dir}: cannot resume with different {', '.join(mismatched)} than the saved config.json")
        saved_scale = (saved.get("optim") or {}).get("lr_scale") or {}
        if bool(saved_scale) != bool(config.optim.lr_scale):  # one optimizer group against one per network
            raise RunError(f"{run_dir}: --resume can change optim.lr_scale's multipliers but not switch it on or off "
                           f"(saved {saved_scale}, now {config.optim.lr_scale})")
        saved_decay = (saved.get("optim") or {}).get("ema_decay") or 0.0
        if (saved_decay > 0) != (config.optim.ema_decay > 0):  # an average from mid-run is not the run's
            raise RunError(f"{run_dir}: --resume can change optim.ema_decay but not switch the weight average on or "
                           f"off (saved {saved_decay}, now {config.optim.ema_decay})")
    options = options or TrainOptions()
    world, device = distributed.start(resolve_device(config.device))
    try:
        world.rows(config.batch_size)  # fail early when the batch does not split evenly
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        t_data = time.perf_counter()
        data = build_dataset(config)
        data_seconds = time.perf_counter() - t_data
        check_protocol_fits(config, data)  # before training, not after it
        method = build_method(config)
        check_image_size(config, method)
        check_lr_scale(method, config.optim.lr_scale)  # before the run directory is written
        check_decay(config.optim.ema_decay)
        probe = curve_probe(method, data, config, device)  # likewise
        train_split = data.split(method.train_split)
        if method.uses_labels and train_split.points is None:
            raise RunError(f"method {config.method!r} needs annotated training images; dataset "
                           f"{config.dataset!r} has none in split {method.train_split!r}")
        if world.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            record = _config_record(config, data, method)
            record["train_options"] = options.effective(device) | {"world_size": world.size}
            atomic.write_json(run_dir / CONFIG, record)
        extra = data.split(method.extra_split) if method.extra_split is not None else None
        result = train(method, train_split, config, run_dir, device=device, resume=resume,
                       on_step=on_step if world.is_main else None, extra=extra, options=options, world=world,
                       probe=probe if world.is_main else None)
        if not world.is_main:
            world.barrier()  # rank 0 evaluates once; the others wait, then leave together
            return {}
        metrics = {
            "method": config.method,
            "K": config.K,
            "dataset": config.dataset,
            "seed": config.seed,
            "steps": result.steps,
            "batch_size": config.batch_size,
            "image_size": config.image_size,
            "train_seconds": round(result.train_seconds, 2),
            "images_per_second": round(result.images_per_second, 2),
            "data_seconds": round(data_seconds, 2),
            "device": str(device),
            "world_size": world.size,
            "final_loss": result.final_loss,
        }
        write_curve(run_dir, run_dir / TRAIN_LOG, f"{config.method} K={config.K} seed {config.seed}: test NME during training")
        t_eval = time.perf_counter()
        unannotated = unannotated_splits(config, data)
        if unannotated:  # e.g. `folder`: training only; score it later on an annotated dataset
            metrics.update(evaluated=False, not_evaluated_because=(
                f"dataset {config.dataset!r} has no annotations in split(s) {', '.join(unannotated)}; score this "
                f"checkpoint with `lmbench eval {run_dir} --dataset NAME` on an annotated dataset"))
        else:
            metrics.update(evaluate_run(method, data, config, run_dir, device))
        metrics["eval_seconds"] = round(time.perf_counter() - t_eval, 2)
        atomic.write_json(run_dir / METRICS, metrics)
        world.barrier()
        return metrics
    finally:
        distributed.stop(world)


def saved_config(run_dir: Path) -> RunConfig:
    """The RunConfig recorded in a run directory's config.json."""
    saved = atomic.read_json(run_dir / CONFIG)
    return RunConfig.from_dict({k: v for k, v in saved.items() if k in RunConfig.__dataclass_fields__})


def reevaluate(run_dir: Path, *, device: str = "auto", protocol_overrides: dict | None = None,
               protocols: list[str] | None = None, floors: bool | None = None,
               dataset: str | None = None, data_root: str | None = None) -> dict:
    """``lmbench eval``: rebuild the method from config.json and score the saved checkpoint.

    ``protocols`` (preset names) are added to ``nme_by_protocol``; the top-level metrics
    change only when the run's own protocol is among them (or no names are given).
    ``dataset`` scores the checkpoint on another dataset than it was trained on (for
    example a ``folder`` run on an annotated set); metrics.json then records both."""
    if not (run_dir / CONFIG).exists():
        raise RunError(f"{run_dir}: no {CONFIG}; is this a run directory?")
    if not (run_dir / CHECKPOINT).exists():
        raise RunError(f"{run_dir}: no {CHECKPOINT} to evaluate")
    config = saved_config(run_dir)
    train_dataset = config.dataset
    if dataset is not None and dataset != config.dataset:
        config.dataset, config.data_root, config.dataset_options = dataset, data_root, {}
    elif data_root is not None:
        config.data_root = data_root
    if protocol_overrides:
        config.protocol = type(config.protocol)(**{**asdict(config.protocol), **protocol_overrides})
    config.device = device
    torch_device = resolve_device(device)
    data = build_dataset(config)
    unannotated = unannotated_splits(config, data)
    if unannotated:
        raise RunError(f"dataset {config.dataset!r} has no annotations in split(s) {', '.join(unannotated)}: "
                       "nothing to score; pass --dataset NAME of an annotated dataset")
    method = build_method(config)
    method.load_state_dict(evaluation_state(load_checkpoint(run_dir / CHECKPOINT)))
    method.to(torch_device)
    from lmbench.protocols import get_protocol

    chosen = [config.protocol if name == config.protocol.name else get_protocol(name) for name in protocols or []]
    metrics = atomic.read_json(run_dir / METRICS) if (run_dir / METRICS).exists() else {}
    update = evaluate_run(method, data, config, run_dir, torch_device, protocols=chosen or None, floors=floors)
    if metrics.get("dataset", config.dataset) != config.dataset:  # scored elsewhere: earlier scores do not carry over
        metrics.pop("nme_by_protocol", None)
    by_protocol = {**metrics.get("nme_by_protocol", {}), **update.pop("nme_by_protocol")}
    metrics.update(update)
    metrics.pop("not_evaluated_because", None)
    metrics.update(dataset=config.dataset, train_dataset=train_dataset, evaluated=True)
    metrics["nme_by_protocol"] = by_protocol
    atomic.write_json(run_dir / METRICS, metrics)
    return metrics
