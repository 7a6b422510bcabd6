"""``lmbench pretrain``: supervised heatmap regression of the hourglass detector.

The task is a :class:`LandmarkMethod` with ``uses_labels`` so that lmbench's one trainer
runs it (reproducible, checkpointed). Each annotated point becomes a Gaussian target
(``sigma`` heatmap pixels, peak 1) on the 1/4-resolution map; the loss is the MSE between
maps and targets, averaged over the maps of annotated points only (a point is unannotated
when it is NaN in the training split; MPII's unannotated joints are set to NaN here).
Batches are augmented with the run's random similarity warp (``config.warp``).

Metrics on the evaluation split: PCKh@0.5 when the split has head boxes (MPII), else PCK@0.5
of the schema's normalising pair (the inter-ocular distance for faces), and the NME of the
direct predictions. The run directory holds config.json, metrics.json, metrics.jsonl and
checkpoint.pt; the checkpoint also carries ``detector`` (state dict) and ``architecture``,
which ``--detector-init`` reads.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F

from lmbench import atomic
from lmbench.config import RunConfig, apply_override, environment
from lmbench.data import ImageSplit, to_pixels
from lmbench.hookspecs import hookimpl
from lmbench.method import LandmarkMethod
from lmbench.nn.bottleneck import render_gaussians
from lmbench.nn.hourglass import HourglassDetector
from lmbench.warps import random_similarity

#: MPII toolkit convention: head size = 0.6 x the diagonal of the head box (SC_BIAS).
HEAD_SIZE_FACTOR = 0.6


# -- the task ---------------------------------------------------------------------------------
class HeatmapPretraining(LandmarkMethod):
    """Heatmap-MSE regression of ``config.K`` annotated points (K = the schema's size)."""

    uses_labels = True
    train_split = "train"

    def __init__(self, config: RunConfig, sigma: float = 1.0, augment: bool = True):
        super().__init__(config)
        self.detector = HourglassDetector.from_config(config.K, config.detector)
        self.sigma, self.augment = sigma, augment

    def losses(self, images, generator, points=None):
        if points is None:
            raise ValueError("heatmap pretraining needs annotated points")
        annotated = torch.isfinite(points).all(-1)  # [B, P]
        points = torch.nan_to_num(points, nan=0.0)
        if self.augment:
            w = self.config.warp
            warp = random_similarity(images.shape[0], rotation_deg=w.rotation_deg, scale=tuple(w.scale),
                                     translation=w.translation, generator=generator, device=images.device)
            images, points = warp.apply_to_images(images, "zeros"), warp.map_points(points)
        maps = self.detector(images).float()
        target = render_gaussians(points.float(), maps.shape[-2:], self.sigma)
        per_map = (maps - target).square().mean(dim=(-2, -1))
        mse = torch.where(annotated, per_map, torch.zeros_like(per_map)).sum() / annotated.sum().clamp(min=1)
        return {"heatmap_mse": mse}

    def detect(self, images: torch.Tensor) -> torch.Tensor:
        return heatmap_peaks(self.detector(images))


def heatmap_peaks(maps: torch.Tensor) -> torch.Tensor:
    """Argmax of each map moved a quarter pixel towards its higher neighbour -> [B,K,2] in [-1, 1]."""
    maps = maps.float()
    b, k, h, w = maps.shape
    index = maps.flatten(2).argmax(-1)
    y, x = index // w, index % w
    padded = F.pad(maps, (1, 1, 1, 1), mode="replicate").flatten(2)

    def at(dy: int, dx: int) -> torch.Tensor:
        return padded.gather(-1, ((y + 1 + dy) * (w + 2) + x + 1 + dx).unsqueeze(-1)).squeeze(-1)

    shift_x = 0.25 * torch.sign(at(0, 1) - at(0, -1))
    shift_y = 0.25 * torch.sign(at(1, 0) - at(-1, 0))
    px, py = x.float() + 0.5 + shift_x, y.float() + 0.5 + shift_y
    return torch.stack([2 * px / w - 1, 2 * py / h - 1], dim=-1)


# -- metrics ----------------------------------------------------------------------------------
def head_sizes(head_boxes: np.ndarray) -> np.ndarray:
    """0.6 x the head box diagonal ([N, 4] x1 y1 x2 y2 -> [N]), as in the MPII evaluation toolkit."""
    boxes = np.asarray(head_boxes, np.float64)
    return HEAD_SIZE_FACTOR * np.linalg.norm(boxes[:, 2:] - boxes[:, :2], axis=-1)


def pck(pred, gt, normaliser, annotated=None, threshold: float = 0.5, names=None) -> dict:
    """Percentage of annotated points within ``threshold x normaliser`` (inclusive) of the truth.

    ``normaliser`` [N] per image; images with a non-finite or non-positive one are left out.
    Returns ``{"total": %, "per_point": {name: %}}``; total pools all counted points.
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    normaliser = np.asarray(normaliser, np.float64)
    mask = np.isfinite(gt).all(-1) if annotated is None else np.asarray(annotated, bool) & np.isfinite(gt).all(-1)
    mask &= (np.isfinite(normaliser) & (normaliser > 0))[:, None]
    if not mask.any():
        raise ValueError("PCK: no annotated point with a valid normaliser")
    distance = np.linalg.norm(pred - np.nan_to_num(gt), axis=-1)
    correct = (distance <= threshold * np.nan_to_num(normaliser)[:, None]) & mask
    names = names or [str(i) for i in range(gt.shape[1])]
    counts = mask.sum(0)
    per_point = {n: round(100.0 * c / m, 4) if m else None for n, c, m in zip(names, correct.sum(0), counts)}
    return {"total": 100.0 * correct.sum() / mask.sum(), "per_point": per_point}


def predict_pixels(method: LandmarkMethod, split: ImageSplit, device, batch_size: int = 64) -> np.ndarray:
    method.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            index = np.arange(start, min(start + batch_size, len(split)))
            out.append(to_pixels(method.detect(split.batch(index, device)).float().cpu(), split.image_size))
    return torch.cat(out).numpy()


def evaluate_pretraining(method, split: ImageSplit, schema, device, threshold: float = 0.5, batch_size: int = 64) -> dict:
    """PCKh (head boxes) or PCK (schema pair), plus the direct NME, on ``split``."""
    pred = predict_pixels(method, split, device, batch_size)
    gt = split.points.astype(np.float64)
    annotated = getattr(split, "annotated", None)
    if annotated is None:
        annotated = np.isfinite(gt).all(-1)
    names = list(schema.names)
    i, j = schema.eye_indices
    pair = np.linalg.norm(gt[:, i] - gt[:, j], axis=-1)
    pair[~(annotated[:, i] & annotated[:, j])] = np.nan
    metrics: dict = {"eval_images": len(split), "threshold": threshold}
    boxes = getattr(split, "head_boxes", None)
    if boxes is not None:
        result = pck(pred, gt, head_sizes(boxes), annotated, threshold, names)
        metrics.update(pckh=result["total"], pckh_per_joint=result["per_point"],
                       pckh_convention="head size = 0.6 x head-box diagonal (MPII toolkit); distance <= 0.5 x head size")
    else:
        result = pck(pred, gt, pair, annotated, threshold, names)
        metrics.update(pck=result["total"], pck_per_point=result["per_point"],
                       pck_normaliser=f"distance between {names[i]} and {names[j]}")
    valid = annotated & np.isfinite(pair)[:, None]
    error = np.linalg.norm(pred - np.nan_to_num(gt), axis=-1) / np.where(np.isfinite(pair), pair, 1.0)[:, None]
    metrics["nme"] = float(100.0 * error[valid].mean()) if valid.any() else None
    metrics["nme_normaliser"] = f"distance between {names[i]} and {names[j]}"
    return metrics


# -- the run ----------------------------------------------------------------------------------
def training_split(split: ImageSplit) -> ImageSplit:
    """The split as the trainer sees it: unannotated points set to NaN (masked by the loss)."""
    if split.points is None:
        raise ValueError("heatmap pretraining needs a dataset with annotated training points")
    points = split.points.astype(np.float32).copy()
    annotated = getattr(split, "annotated", None)
    if annotated is not None:
        points[~annotated] = np.nan
    return ImageSplit(split.images, points, split.sources)


def pretrain_config(**settings) -> RunConfig:
    """A RunConfig with the pretraining defaults (Adam 1e-3, betas (0.9, 0.999), no weight decay)."""
    config = RunConfig(method="pretrain", **settings)
    config.optim.betas, config.optim.weight_decay = (0.9, 0.999), 0.0
    return config


def pretrain(config: RunConfig, run_dir: Path, *, sigma: float = 1.0, augment: bool = True,
             eval_split: str = "test", on_step=None) -> dict:
    """Train the detector on ``config.dataset``'s annotated points and write the run directory."""
    from lmbench.runner import CONFIG, METRICS, RunError, build_dataset, check_image_size, seed_everything
    from lmbench.train import CHECKPOINT, load_checkpoint, resolve_device, train

    if (run_dir / CHECKPOINT).exists():
        raise RunError(f"{run_dir} already holds a run; choose another --out")
    device = resolve_device(config.device)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    data = build_dataset(config)
    if data.train.points is None:
        raise RunError(f"dataset {config.dataset!r} has no annotated training split to pretrain on")
    config.K = data.schema.num_points
    method = HeatmapPretraining(config, sigma=sigma, augment=augment)
    check_image_size(config, method)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = {"task": "heatmap regression", "sigma": sigma, "augment": augment, "eval_split": eval_split,
            "points": list(data.schema.names)}
    atomic.write_json(run_dir / CONFIG, {**config.to_dict(), "pretrain": task, "dataset_info": data.info,
                                        "environment": environment()})
    result = train(method, training_split(data.train), config, run_dir, device=device, on_step=on_step)
    t_eval = time.perf_counter()
    metrics = {"task": "pretrain", "dataset": config.dataset, "seed": config.seed, "steps": result.steps,
               "batch_size": config.batch_size, "image_size": config.image_size, "points": config.K,
               "train_seconds": round(result.train_seconds, 2), "final_loss": result.final_loss,
               **evaluate_pretraining(method, data.split(eval_split), data.schema, device, batch_size=config.eval_batch_size)}
    metrics["eval_seconds"] = round(time.perf_counter() - t_eval, 2)
    atomic.write_json(run_dir / METRICS, metrics)
    state = load_checkpoint(run_dir / CHECKPOINT)
    state["detector"] = {k: v.detach().cpu() for k, v in method.detector.state_dict().items()}
    state["architecture"] = {"num_maps": config.K, **{k: getattr(config.detector, k)
                                                      for k in ("channels", "depth", "stem_channels")}}
    state["points"] = list(data.schema.names)
    atomic.save_torch(run_dir / CHECKPOINT, state)
    return metrics


@click.command("pretrain")
@click.option("--dataset", default="mpii", show_default=True, help="A registered dataset with annotated points.")
@click.option("--data-root", type=click.Path(file_okay=False), help="Where the dataset's files are.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run directory.  [default: runs/pretrain-<dataset>-s<seed>-<time>]")
@click.option("--steps", type=click.IntRange(1), help="Training steps.  [default: 1000]")
@click.option("--batch-size", type=click.IntRange(1), help="Images per step.  [default: 16]")
@click.option("--image-size", type=click.IntRange(16, 1024), help="Input size in pixels.  [default: 64]")
@click.option("--channels", type=click.IntRange(8), help="Hourglass channels.  [default: RunConfig's]")
@click.option("--depth", type=click.IntRange(1, 6), help="Hourglass depth.  [default: RunConfig's]")
@click.option("--sigma", type=click.FloatRange(min=0.1), default=1.0, show_default=True, help="Target Gaussian std, heatmap pixels.")
@click.option("--augment/--no-augment", default=True, show_default=True, help="Random similarity warps (config.warp).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(0), default=0, help="CPU threads (0: torch's default).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any RunConfig setting (repeatable).")
def pretrain_command(dataset, data_root, out_dir, steps, batch_size, image_size, channels, depth, sigma, augment,
                     seed, device, threads, overrides) -> None:
    """Pretrain the hourglass detector by heatmap regression (PCKh on MPII) for --detector-init."""
    from lmbench import registry
    from lmbench.cli import console, out

    try:
        dataset = registry.get_dataset(dataset).name
    except registry.UnknownName as error:
        raise click.BadParameter(str(error), param_hint="--dataset") from None
    config = pretrain_config(dataset=dataset, data_root=data_root, seed=seed, device=device, threads=threads)
    for name, value in (("steps", steps), ("batch_size", batch_size), ("image_size", image_size)):
        if value is not None:
            setattr(config, name, value)
    for name, value in (("channels", channels), ("depth", depth)):
        if value is not None:
            setattr(config.detector, name, value)
    for assignment in overrides:
        try:
            apply_override(config, assignment)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--set") from None
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out_dir) if out_dir else Path("runs") / f"pretrain-{dataset}-s{seed}-{stamp}"
    console.print(f"[bold]lmbench pretrain[/] on {dataset} -> {run_dir}")
    metrics = pretrain(config, run_dir, sigma=sigma, augment=augment)
    name = "pckh" if "pckh" in metrics else "pck"
    nme = f"  NME {metrics['nme']:.2f}%" if metrics.get("nme") is not None else ""
    out.print(f"[bold]{name.upper()}@0.5[/] {metrics[name]:.2f}%{nme}  train {metrics['train_seconds']:.0f}s\n"
              f"run directory: {run_dir}  (use: lmbench run --detector-init {run_dir / 'checkpoint.pt'})")


@hookimpl
def register_commands(cli):
    cli.add_command(pretrain_command)
