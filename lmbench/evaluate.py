"""The evaluator: frozen detector -> linear regressor -> NME on the test split.

Every choice that changes the numbers comes from a :class:`lmbench.config.ProtocolConfig`
(named presets in :mod:`lmbench.protocols`) and is recorded with every result.

Metrics (NME in percent of the ground-truth inter-ocular distance):

- forward NME: discovered K points -> annotated points (the headline number),
- backward NME (Sanchez): annotated points -> discovered points, the error of the predicted
  discovered points normalised by the ground-truth inter-ocular distance,
- per-landmark NME, failure rate (images with NME > 10 %), the cumulative error
  distribution (CED) and its area up to 10 % (``auc_10``, in [0, 1]),
- the N sweep of Li et al.'s Table II: the regressor fitted on seeded random subsets of N
  annotated images, ``repeats`` subsets per N (N = "all" is deterministic: one fit),
- floors: the mean training shape, and (optionally) an untrained detector through the same
  regressor.

Coordinate spaces. The regressor is fitted in the protocol's space; errors are measured in
input pixels (``original``: in original-image pixels). For a uniform scaling of both X and
Y, ridge with the relative penalty ``lambda * max(C)`` and least squares give exactly the
same predictions, and a bias absorbs any translation, so ``pixels``, ``heatmap``,
``normalized`` and ``unit_centered`` give identical numbers on square images when the
regressor has a bias. They differ (i) without bias, where the origin matters (pixels have
it at the corner, normalized / unit_centered at the centre), (ii) for ridge on non-square
images, where the per-axis scalings change the penalty's relative weight, and (iii) for
``original``, where each image has its own scale, which changes the fit.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lmbench import atomic
from lmbench.config import ProtocolConfig
from lmbench.data import DatasetSplits, ImageSplit, to_pixels
from lmbench.protocols import leaks, validate_protocol

EVALUATION = "evaluation.json"
EVALUATION_DIR = "evaluation"
CED_MAX_PERCENT = 20.0
CED_STEP_PERCENT = 0.1
FAILURE_THRESHOLD = 0.10


class ProtocolMismatch(ValueError):
    """The dataset was prepared differently from what the protocol requires."""


# -- regression -------------------------------------------------------------------------
def fit_linear(X: np.ndarray, Y: np.ndarray, *, ridge_lambda: float = 0.0, bias: bool = True) -> np.ndarray:
    """Fit Y ~ [X, 1] W. Returns W of shape [D(+1), T] (the last row is the bias).

    Ridge follows Sanchez's code: the penalty is ``ridge_lambda * max(C)`` with C = Xc^T Xc
    (Xc the centred features when ``bias``), so lambda is scale-free. ``ridge_lambda = 0``
    is plain least squares (minimum-norm solution). With fewer images than features, least
    squares returns the minimum-norm solution and ridge stays well-posed; when C = 0 (one
    image with bias) both give W = 0, i.e. predict the mean of the fitted targets.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X [N,D] and Y [N,T] must have the same N, got {X.shape} and {Y.shape}")
    if X.shape[0] == 0:
        raise ValueError("cannot fit a regressor on zero images")
    x_mean = X.mean(0) if bias else np.zeros(X.shape[1])
    y_mean = Y.mean(0) if bias else np.zeros(Y.shape[1])
    Xc, Yc = X - x_mean, Y - y_mean
    C = Xc.T @ Xc
    if ridge_lambda > 0 and C.max() > 0:
        W = np.linalg.solve(C + ridge_lambda * C.max() * np.eye(C.shape[0]), Xc.T @ Yc)
    elif ridge_lambda > 0:
        W = np.zeros((X.shape[1], Y.shape[1]))
    else:
        W = np.linalg.lstsq(Xc, Yc, rcond=None)[0]
    b = y_mean - x_mean @ W
    return np.vstack([W, b[None]])


def predict_linear(W: np.ndarray, X: np.ndarray) -> np.ndarray:
    return np.asarray(X, dtype=np.float64) @ W[:-1] + W[-1]


def fit_predict(fit_x: np.ndarray, fit_y: np.ndarray, test_x: np.ndarray, protocol: ProtocolConfig) -> np.ndarray:
    """Fit the protocol's regressor on point sets [N,K,2] -> [N,P,2]; predict [M,P,2]."""
    lam = protocol.ridge_lambda if protocol.regressor == "ridge" else 0.0
    W = fit_linear(fit_x.reshape(len(fit_x), -1), fit_y.reshape(len(fit_y), -1), ridge_lambda=lam, bias=protocol.bias)
    return predict_linear(W, test_x.reshape(len(test_x), -1)).reshape(len(test_x), *fit_y.shape[1:])


# -- coordinate spaces ------------------------------------------------------------------
def _affine(points: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    return np.einsum("nij,npj->npi", matrices[:, :, :2], points) + matrices[:, None, :, 2]


def _invert_affine(matrices: np.ndarray) -> np.ndarray:
    A_inv = np.linalg.inv(matrices[:, :, :2])
    return np.concatenate([A_inv, -np.einsum("nij,nj->ni", A_inv, matrices[:, :, 2])[..., None]], axis=2)


def to_space(points: np.ndarray, protocol: ProtocolConfig, image_size: tuple[int, int] | None,
             to_original: np.ndarray | None = None) -> np.ndarray:
    """Input-pixel points [N,P,2] -> the protocol's regression space.

    ``image_size`` is (H, W) of the input images; ``to_original`` [N,2,3] maps input pixels
    to original-image pixels (needed by ``original`` only).
    """
    points = np.asarray(points, np.float64)
    space = protocol.coordinates
    if space == "pixels":
        return points.copy()
    if space == "original":
        if to_original is None:
            raise ValueError(f"protocol {protocol.name!r}: coordinates 'original' need the dataset's mapping "
                             "back to the original images (split.to_original), which it does not provide")
        return _affine(points, np.asarray(to_original, np.float64))
    if image_size is None:
        raise ValueError(f"coordinates {space!r} need the input image size")
    h, w = image_size
    if space == "heatmap":
        return points * [protocol.heatmap_size / w, protocol.heatmap_size / h]
    if space == "normalized":
        return points * [2.0 / w, 2.0 / h] - 1.0
    if space == "unit_centered":
        return points / [w, h] - 0.5
    raise ValueError(f"protocol {protocol.name!r}: unknown coordinates {space!r}")


def from_space(points: np.ndarray, protocol: ProtocolConfig, image_size: tuple[int, int] | None,
               to_original: np.ndarray | None = None) -> np.ndarray:
    """The inverse of :func:`to_space`: back to input pixels."""
    points = np.asarray(points, np.float64)
    space = protocol.coordinates
    if space == "pixels":
        return points.copy()
    if space == "original":
        return _affine(points, _invert_affine(np.asarray(to_original, np.float64)))
    h, w = image_size
    if space == "heatmap":
        return points / [protocol.heatmap_size / w, protocol.heatmap_size / h]
    if space == "normalized":
        return (points + 1.0) / [2.0 / w, 2.0 / h]
    if space == "unit_centered":
        return (points + 0.5) * [w, h]
    raise ValueError(f"protocol {protocol.name!r}: unknown coordinates {space!r}")


def _error_space(points: np.ndarray, protocol: ProtocolConfig, image_size, to_original) -> np.ndarray:
    """Where errors are measured: original-image pixels for ``original``, else input pixels."""
    if protocol.coordinates == "original":
        return to_space(points, protocol, image_size, to_original)
    return np.asarray(points, np.float64)


# -- metrics ----------------------------------------------------------------------------
def inter_ocular(gt: np.ndarray, eye_indices: tuple[int, int] = (0, 1)) -> np.ndarray:
    gt = np.asarray(gt, np.float64)
    iod = np.linalg.norm(gt[:, eye_indices[0]] - gt[:, eye_indices[1]], axis=-1)
    if np.any(iod <= 0):
        raise ValueError("an image has zero inter-ocular distance; cannot normalise")
    return iod


def point_errors(pred: np.ndarray, target: np.ndarray, iod: np.ndarray) -> np.ndarray:
    """[N,P] point errors over each image's inter-ocular distance (fractions)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    return np.linalg.norm(pred - target, axis=-1) / iod[:, None]


def per_image_nme(pred: np.ndarray, gt: np.ndarray, eye_indices: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Mean point error of each image over the inter-ocular distance (a fraction, not %)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    return point_errors(pred, gt, inter_ocular(gt, eye_indices)).mean(-1)


def nme_percent(pred: np.ndarray, gt: np.ndarray, eye_indices: tuple[int, int] = (0, 1)) -> float:
    """NME in percent: mean over points and images of ||pred - gt|| / inter-ocular distance x 100."""
    return float(per_image_nme(pred, gt, eye_indices).mean() * 100)


def ced_curve(per_image: np.ndarray, *, max_percent: float = CED_MAX_PERCENT,
              step: float = CED_STEP_PERCENT) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution: thresholds (NME %) and the fraction of images at or below."""
    thresholds = np.round(np.arange(0.0, max_percent + step / 2, step), 6)
    errors = np.sort(np.asarray(per_image, np.float64) * 100)
    return thresholds, np.searchsorted(errors, thresholds, side="right") / len(errors)


def auc(thresholds: np.ndarray, fraction: np.ndarray, limit: float = 10.0) -> float:
    """Area under the CED up to ``limit`` percent, normalised to [0, 1]."""
    keep = thresholds <= limit + 1e-9
    x, y = thresholds[keep], fraction[keep]
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / limit)


def subset_indices(n_total: int, n: int, seed: int, repeat: int) -> np.ndarray:
    """The seeded subset of the sweep: a pure function of (seed, N, repeat)."""
    return np.sort(np.random.default_rng([seed, n, repeat]).choice(n_total, size=n, replace=False))


def sweep_sizes(protocol: ProtocolConfig, n_fit: int) -> list[int]:
    """The protocol's N values capped by the fit split, plus N = all."""
    return sorted({int(n) for n in protocol.sweep_sizes if int(n) < n_fit} | {n_fit})


# -- the protocol on point sets -----------------------------------------------------------
def evaluate_points(
    fit_points: np.ndarray,
    fit_gt: np.ndarray,
    test_points: np.ndarray,
    test_gt: np.ndarray,
    protocol: ProtocolConfig,
    eye_indices: tuple[int, int],
    *,
    image_size: tuple[int, int] | None = None,
    fit_to_original: np.ndarray | None = None,
    test_to_original: np.ndarray | None = None,
    sweep: bool = True,
) -> dict:
    """Fit the regressor on (fit_points -> fit_gt) and score it on the test pair.

    Points are [N,K,2] / [N,P,2] in input pixels. Returns scalars plus arrays (predictions
    in input pixels, per-landmark NME, CED, sweep).
    """
    validate_protocol(protocol)
    n_fit, n_test = len(fit_points), len(test_points)
    fx = to_space(fit_points, protocol, image_size, fit_to_original)
    fy = to_space(fit_gt, protocol, image_size, fit_to_original)
    tx = to_space(test_points, protocol, image_size, test_to_original)
    ty = to_space(test_gt, protocol, image_size, test_to_original)

    def errors(pred_space, target_pixels, iod, to_original):
        pred = _error_space(from_space(pred_space, protocol, image_size, to_original), protocol, image_size, to_original)
        target = _error_space(target_pixels, protocol, image_size, to_original)
        return point_errors(pred, target, iod)

    test_iod = inter_ocular(_error_space(test_gt, protocol, image_size, test_to_original), eye_indices)
    fit_iod = inter_ocular(_error_space(fit_gt, protocol, image_size, fit_to_original), eye_indices)
    pred = fit_predict(fx, fy, tx, protocol)
    forward = errors(pred, test_gt, test_iod, test_to_original)
    per_image = forward.mean(-1)
    fit_errors = errors(fit_predict(fx, fy, fx, protocol), fit_gt, fit_iod, fit_to_original)
    backward = errors(fit_predict(fy, fx, ty, protocol), test_points, test_iod, test_to_original)
    mean_shape = errors(np.broadcast_to(fy.mean(0), ty.shape), test_gt, test_iod, test_to_original)
    thresholds, fraction = ced_curve(per_image)
    result = {
        "nme": float(per_image.mean() * 100),
        "nme_backward": float(backward.mean() * 100),
        "nme_mean_shape": float(mean_shape.mean() * 100),
        "nme_fit_split": float(fit_errors.mean() * 100),
        "failure_rate_10": float((per_image > FAILURE_THRESHOLD).mean() * 100),
        "auc_10": auc(thresholds, fraction),
        "n_fit": n_fit,
        "n_test": n_test,
        "predictions": from_space(pred, protocol, image_size, test_to_original),
        "per_image": per_image,
        "per_landmark": forward.mean(0) * 100,
        "ced_thresholds": thresholds,
        "ced": fraction,
        "ced_mean_shape": ced_curve(mean_shape.mean(-1))[1],
    }
    if sweep:
        result["sweep"] = run_sweep(fx, fy, tx, test_gt, protocol, test_iod, image_size, test_to_original)
    return result


BORDER_FRACTION = 0.05  # "near the border": within 5 % of the image side of an edge
WANDERING_FACTOR = 2.0  # a point "wanders" when it moves over twice as much as the annotated points


def point_spread(points: np.ndarray) -> np.ndarray:
    """Std of each point's position over the images, averaged over x and y: [N,K,2] -> [K]."""
    return np.asarray(points, np.float64).std(axis=0).mean(axis=-1)


def point_stability(test_points: np.ndarray, test_gt: np.ndarray, image_size: tuple[int, int] | None) -> dict:
    """How the discovered points behave over the test images, in input pixels.

    A point that follows a facial part moves about as much as the annotated points do; one
    that follows background clutter moves far more (``wandering_points``), and one whose map
    saturates at the frame's edge sits near the border on most images (``border_points``).
    Neither lowers the regressor's error, so these counts explain a poor NME.
    """
    spread = point_spread(test_points)
    gt_spread = float(point_spread(test_gt).mean())
    out = {"point_spread_px": spread, "gt_point_spread_px": gt_spread,
           "wandering_points": int((spread > WANDERING_FACTOR * gt_spread).sum())}
    if image_size is not None:
        h, w = image_size
        x, y = test_points[..., 0], test_points[..., 1]
        near = (np.minimum(x, w - x) < BORDER_FRACTION * w) | (np.minimum(y, h - y) < BORDER_FRACTION * h)
        out["near_border_fraction"] = near.mean(axis=0)
        out["border_points"] = int((out["near_border_fraction"] > 0.5).sum())
    return out


def run_sweep(fx, fy, tx, test_gt, protocol, test_iod, image_size, test_to_original) -> list[dict]:
    """Li et al.'s Table II: NME when the regressor sees only N annotated images."""
    rows = []
    for n in sweep_sizes(protocol, len(fx)):
        is_all = n == len(fx)
        values = []
        for repeat in range(1 if is_all else protocol.repeats):
            idx = np.arange(n) if is_all else subset_indices(len(fx), n, protocol.seed, repeat)
            pred = from_space(fit_predict(fx[idx], fy[idx], tx, protocol), protocol, image_size, test_to_original)
            pred = _error_space(pred, protocol, image_size, test_to_original)
            target = _error_space(test_gt, protocol, image_size, test_to_original)
            values.append(float(point_errors(pred, target, test_iod).mean() * 100))
        rows.append({"n": n, "all": is_all, "repeats": len(values), "nme_mean": float(np.mean(values)),
                     "nme_std": float(np.std(values)), "values": values})
    return rows


# -- landmark extraction ----------------------------------------------------------------
@torch.no_grad()
def extract_landmarks(
    detect: Callable[[torch.Tensor], torch.Tensor],
    split: ImageSplit,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Run ``detect`` over a whole split; returns [N,K,2] in the split's pixel coordinates."""
    out = []
    size = split.image_size
    for start in range(0, len(split), batch_size):
        images = split.batch(np.arange(start, min(start + batch_size, len(split))), device)
        out.append(to_pixels(detect(images).float(), size).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def dataset_crop(data: DatasetSplits) -> tuple[str | None, str]:
    """(crop kind, description) the dataset applied to its images: ``("gt_box" | "fixed", ...)``
    from lmbench.prepare's preprocessing record ``info['protocol']``, else ``info['test_crop']``;
    ``(None, "none")`` for a dataset without a crop step (rendered images such as ``synthetic``)."""
    record = data.info.get("protocol")
    if isinstance(record, dict) and "name" in record:
        kind = "gt_box" if record.get("leaks_test_annotations") or record["name"] == "gt_box" else "fixed"
        params = ",".join(f"{k}={v}" for k, v in (record.get("params") or {}).items())
        return kind, f"{record['name']}:{params}" if params else str(record["name"])
    crop = data.info.get("test_crop")
    return (None, "none") if crop is None else (str(crop), str(crop))


def check_test_crop(data: DatasetSplits, protocol: ProtocolConfig, *, strict: bool = True) -> str:
    """The test crop the dataset applied, checked against the one the protocol requires.

    A dataset without a crop step records nothing: its images are used as they are and this
    returns ``"none"``. A different crop is refused (``strict``, :class:`ProtocolMismatch`) or
    returned flagged as a mismatch.
    """
    kind, description = dataset_crop(data)
    if kind is not None and kind != protocol.test_crop:
        message = (f"protocol {protocol.name!r} requires test_crop={protocol.test_crop!r} but dataset "
                   f"{data.name!r} was prepared with {description!r} ({kind}); rebuild it with "
                   f"dataset_options.protocol={'gt_box' if protocol.test_crop == 'gt_box' else '<a fixed crop>'}")
        if strict:
            raise ProtocolMismatch(message)
        warnings.warn(message, stacklevel=2)
        return f"{description} (MISMATCH: protocol requires {protocol.test_crop})"
    return description


def _points(cache: dict, key, detect, split: ImageSplit, batch_size: int, device) -> np.ndarray:
    if key not in cache:
        cache[key] = extract_landmarks(detect, split, batch_size=batch_size, device=device)
    return cache[key]


def evaluate(
    detect: Callable[[torch.Tensor], torch.Tensor],
    data: DatasetSplits,
    protocol: ProtocolConfig,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    untrained_detect: Callable[[torch.Tensor], torch.Tensor] | None = None,
    cache: dict | None = None,
    strict_crop: bool = True,
    sweep: bool = True,
) -> dict:
    """The whole protocol for a frozen detector. Returns metrics plus the raw arrays.

    ``untrained_detect`` adds the untrained-detector floor (``nme_untrained``); ``cache``
    shares detector passes between protocols that use the same dataset; ``sweep=False``
    skips the N sweep (the learning curve's probes, lmbench.curve).
    """
    validate_protocol(protocol)
    crop = check_test_crop(data, protocol, strict=strict_crop)
    fit, test = data.split(protocol.fit_split), data.split(protocol.test_split)
    for split_name, split in ((protocol.fit_split, fit), (protocol.test_split, test)):
        if split.points is None:
            raise ValueError(f"dataset {data.name!r}: split {split_name!r} has no annotations to evaluate on")
    cache = {} if cache is None else cache
    options = dict(image_size=test.image_size, fit_to_original=_to_original(data, fit, protocol),
                   test_to_original=_to_original(data, test, protocol))
    if fit.image_size != test.image_size:
        raise ValueError(f"dataset {data.name!r}: splits {protocol.fit_split!r} and {protocol.test_split!r} "
                         f"have different image sizes {fit.image_size} and {test.image_size}")
    eyes = data.schema.eye_indices
    points = [_points(cache, (id(data), name, "trained"), detect, split, batch_size, device)
              for name, split in ((protocol.fit_split, fit), (protocol.test_split, test))]
    result = evaluate_points(points[0], fit.points, points[1], test.points, protocol, eyes, sweep=sweep, **options)
    if untrained_detect is not None:
        floor_points = [_points(cache, (id(data), name, "untrained"), untrained_detect, split, batch_size, device)
                        for name, split in ((protocol.fit_split, fit), (protocol.test_split, test))]
        floor = evaluate_points(floor_points[0], fit.points, floor_points[1], test.points, protocol, eyes,
                                sweep=False, **options)
        result.update(nme_untrained=floor["nme"], nme_untrained_backward=floor["nme_backward"],
                      ced_untrained=floor["ced"])
    result.update(point_stability(points[1], test.points, test.image_size))  # the trained detector's only, not the floor's
    result.update(protocol=asdict(protocol), discovered=points[1], test_crop_used=crop, leaks_test_annotations=leaks(protocol),
                  landmark_names=list(data.schema.names))
    return result


def _to_original(data: DatasetSplits, split: ImageSplit, protocol: ProtocolConfig) -> np.ndarray | None:
    """[N,2,3] input -> original-image pixel maps, from ``split.to_original`` or, for a dataset
    whose inputs are its originals (``info['original_coordinates'] == 'input'``), identity."""
    if protocol.coordinates != "original":
        return None
    maps = getattr(split, "to_original", None)
    if maps is None and data.info.get("original_coordinates") == "input":
        maps = np.broadcast_to(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (len(split), 2, 3))
    if maps is None:
        raise ValueError(f"protocol {protocol.name!r} uses original-image coordinates but dataset {data.name!r} "
                         "cannot map its inputs back (no split.to_original, no info['original_coordinates'])")
    return np.asarray(maps, np.float64)


def evaluate_protocols(
    detect: Callable[[torch.Tensor], torch.Tensor],
    data: DatasetSplits,
    protocols: list[ProtocolConfig],
    *,
    rebuild: Callable[[str], DatasetSplits] | None = None,
    untrained_detect: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> dict[str, dict]:
    """Evaluate one detector under several protocols, sharing detector passes.

    A protocol whose test crop differs from the one ``data`` records gets the dataset from
    ``rebuild(test_crop)`` (the runner rebuilds it with ``dataset_options.test_crop``).
    """
    recorded = dataset_crop(data)[0]
    variants = {recorded: data}
    cache: dict = {}
    results = {}
    for protocol in protocols:
        chosen = data
        if recorded is not None and recorded != protocol.test_crop:
            if protocol.test_crop not in variants and rebuild is not None:
                variants[protocol.test_crop] = rebuild(protocol.test_crop)
            chosen = variants.get(protocol.test_crop, data)
        results[protocol.name] = evaluate(detect, chosen, protocol, batch_size=batch_size, device=device,
                                          untrained_detect=untrained_detect, cache=cache)
    return results


def direct_extras(result: dict, data: DatasetSplits, protocol: ProtocolConfig) -> dict:
    """Add the distribution metrics (per-landmark NME, CED, AUC) and the crop record to a result of
    :func:`lmbench.evaluate_direct.evaluate_direct` (supervised references: no regressor)."""
    crop = check_test_crop(data, protocol)
    fit, test = data.split(protocol.fit_split), data.split(protocol.test_split)
    iod = inter_ocular(test.points, data.schema.eye_indices)
    forward = point_errors(result["predictions"], test.points, iod)
    mean_shape = point_errors(np.broadcast_to(np.asarray(fit.points, np.float64).mean(0), test.points.shape),
                              test.points, iod)
    thresholds, fraction = ced_curve(forward.mean(-1))
    result.update(per_landmark=forward.mean(0) * 100, ced_thresholds=thresholds, ced=fraction,
                  ced_mean_shape=ced_curve(mean_shape.mean(-1))[1], auc_10=auc(thresholds, fraction),
                  test_crop_used=crop, leaks_test_annotations=leaks(protocol), landmark_names=list(data.schema.names))
    return result


# -- records ----------------------------------------------------------------------------
SCALARS = ("nme", "nme_backward", "nme_mean_shape", "nme_untrained", "nme_untrained_backward", "nme_fit_split",
           "failure_rate_10", "auc_10", "n_fit", "n_test", "test_crop_used", "leaks_test_annotations", "supervised", "regressor",
           "heatmap_spread", "wandering_points", "border_points", "gt_point_spread_px")


def scalar_metrics(result: dict) -> dict:
    """The metrics.json entry of one protocol's result."""
    record = {key: result[key] for key in SCALARS if key in result}
    record["protocol"] = result["protocol"]
    return record


def metrics_record(results: dict[str, dict], own: str) -> dict:
    """What goes into metrics.json: the run's own protocol at top level, all in nme_by_protocol."""
    record = {"nme_by_protocol": {name: scalar_metrics(result) for name, result in results.items()}}
    if own in results:
        record.update(scalar_metrics(results[own]))
    return record


def _csv(header: list[str], rows) -> str:
    buffer = io.StringIO()
    buffer.write(",".join(header) + "\n")
    for row in rows:
        buffer.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row) + "\n")
    return buffer.getvalue()


def arrays_record(result: dict) -> dict:
    """The arrays of one protocol's result, as JSON-ready lists."""
    record = {
        "protocol": result["protocol"],
        "metrics": {k: v for k, v in scalar_metrics(result).items() if k != "protocol"},
        "per_landmark": {"names": result.get("landmark_names") or [str(i) for i in range(len(result["per_landmark"]))],
                         "nme": [float(v) for v in result["per_landmark"]]},
        "ced": {"thresholds": result["ced_thresholds"].tolist(), "fraction": result["ced"].tolist(),
                "fraction_mean_shape": result["ced_mean_shape"].tolist()},
        "sweep": result.get("sweep", []),
    }
    if "ced_untrained" in result:
        record["ced"]["fraction_untrained"] = result["ced_untrained"].tolist()
    if "point_spread_px" in result:
        record["points"] = {"spread_px": [float(v) for v in result["point_spread_px"]]}
        if "near_border_fraction" in result:
            record["points"]["near_border_fraction"] = [float(v) for v in result["near_border_fraction"]]
    return record


def write_evaluation(run_dir: str | Path, results: dict[str, dict]) -> None:
    """Merge the arrays into ``evaluation.json`` and write ``evaluation/<protocol>/*.csv``."""
    run_dir = Path(run_dir)
    path = run_dir / EVALUATION
    existing = {"protocols": {}}
    if path.exists():
        try:
            existing = atomic.read_json(path)
        except ValueError as error:
            warnings.warn(f"{error}; rewriting it", stacklevel=2)
    for name, result in results.items():
        record = arrays_record(result)
        existing.setdefault("protocols", {})[name] = record
        folder = run_dir / EVALUATION_DIR / name
        atomic.write_text(folder / "per_landmark.csv", _csv(
            ["landmark", "nme"], zip(record["per_landmark"]["names"], record["per_landmark"]["nme"])))
        ced = record["ced"]
        columns = ["threshold_percent", "fraction", "fraction_mean_shape"] + (
            ["fraction_untrained"] if "fraction_untrained" in ced else [])
        atomic.write_text(folder / "ced.csv", _csv(columns, zip(*(ced[c] for c in ["thresholds", *columns[1:]]))))
        if "points" in record:
            columns = ["point", *record["points"]]
            atomic.write_text(folder / "points.csv", _csv(columns, zip(
                range(len(record["points"]["spread_px"])), *record["points"].values())))
        atomic.write_text(folder / "sweep.csv", _csv(
            ["n", "all", "repeat", "seed", "nme"],
            ((row["n"], row["all"], r, result["protocol"]["seed"], v)
             for row in record["sweep"] for r, v in enumerate(row["values"]))))
    atomic.write_json(path, existing)
