"""Scoring methods that predict the dataset's own annotated points (``predicts_annotations``).

The supervised references (lmbench.methods.supervised) output one point per annotated
landmark, so their predictions are compared with the ground truth as they are: no
regressor is fitted (``"regressor": "none (supervised)"``, ``"n_fit": 0``). The rest of the
record mirrors :func:`lmbench.evaluate.evaluate` so that reports can put both side by side.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import numpy as np
import torch

from lmbench.config import ProtocolConfig
from lmbench.data import DatasetSplits, ImageSplit
from lmbench.evaluate import extract_landmarks, nme_percent, per_image_nme

REGRESSOR = "none (supervised)"


@torch.no_grad()
def split_mean(fn: Callable[[torch.Tensor], torch.Tensor], split: ImageSplit, *, batch_size: int = 64,
               device: torch.device | str = "cpu") -> float:
    """Mean over a split's images of a per-image statistic ``fn(images) -> [B]``."""
    total = 0.0
    for start in range(0, len(split), batch_size):
        images = split.batch(np.arange(start, min(start + batch_size, len(split))), device)
        total += float(fn(images).double().sum())
    return total / len(split)


def evaluate_direct(
    detect: Callable[[torch.Tensor], torch.Tensor],
    data: DatasetSplits,
    protocol: ProtocolConfig,
    *,
    spread: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> dict:
    """NME (%) of ``detect``'s points against the annotations of ``protocol.test_split``.

    ``nme_fit_split`` is the same error on ``protocol.fit_split`` (for the supervised
    references, their own training split); ``nme_mean_shape`` predicts the fit split's mean
    shape. ``spread(images) -> [B]`` (optional) is averaged over the test split as
    ``heatmap_spread``. Returns scalars plus ``predictions`` / ``discovered`` [N,P,2] (pixels).
    """
    fit, test = data.split(protocol.fit_split), data.split(protocol.test_split)
    for split_name, split in ((protocol.fit_split, fit), (protocol.test_split, test)):
        if split.points is None:
            raise ValueError(f"dataset {data.name!r}: split {split_name!r} has no annotations to evaluate on")
    fit_pred = extract_landmarks(detect, fit, batch_size=batch_size, device=device)
    test_pred = extract_landmarks(detect, test, batch_size=batch_size, device=device)
    if test_pred.shape != test.points.shape:
        raise ValueError(f"the method predicts {test_pred.shape[1]} points but dataset {data.name!r} annotates "
                         f"{test.points.shape[1]}; a method with predicts_annotations needs K = {test.points.shape[1]}")
    eyes = data.schema.eye_indices
    per_image = per_image_nme(test_pred, test.points, eyes)
    result = {
        "nme": float(per_image.mean() * 100),
        "nme_mean_shape": nme_percent(np.broadcast_to(fit.points.mean(0), test.points.shape), test.points, eyes),
        "nme_fit_split": nme_percent(fit_pred, fit.points, eyes),
        "failure_rate_10": float((per_image > 0.10).mean() * 100),
        "n_fit": 0,
        "n_test": len(test_pred),
        "supervised": True,
        "regressor": REGRESSOR,
        "protocol": asdict(protocol),
        "predictions": test_pred,
        "discovered": test_pred,
    }
    if spread is not None:
        result["heatmap_spread"] = split_mean(spread, test, batch_size=batch_size, device=device)
    return result
