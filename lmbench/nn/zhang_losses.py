"""Zhang et al. (CVPR 2018) landmark maps and loss terms, as small pure functions.

Units. lmbench's networks use normalised coordinates in ``[-1, 1]`` (``align_corners=False``,
see :mod:`lmbench.data`). Zhang et al.'s code measures landmark locations and spreads in
``[0, 1]`` image coordinates for the concentration and separation terms, and in the spatial
transformer's ``[-1, 1]`` coordinates for the equivariance term (``coordinate_to_stn`` in
``net_modules/auto_struct/keypoint_encoder.py`` of ``YutingZhang/lmdis-rep``). One ``[0, 1]``
unit is two normalised units (:data:`UNIT_PER_NORMALISED` = 0.5), so:

- :func:`concentration_loss` and :func:`separation_loss` take normalised inputs and convert
  to ``[0, 1]`` units inside, so that their weights and bandwidth are the original's;
- :func:`equivariance_loss` works in normalised units directly, which are the original's.

Every function returns the term *without* its weight, averaged over the batch and summed
over landmarks, as the original does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmbench.nn.bottleneck import pixel_centres

#: Length of one normalised unit in [0, 1] image units.
UNIT_PER_NORMALISED = 0.5
#: exp of the entropy of a 2-D isotropic unit Gaussian: exp(1 + log 2 pi) = 2 pi e.
TWO_PI_E = 2.0 * math.pi * math.e


def landmark_maps(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Detector scores [B,K+1,h,w] (last channel = background) -> (maps, probs).

    ``probs`` [B,K+1,h,w]: the softmax over the K+1 channels at every pixel (Zhang et al.'s
    ``tf.nn.softmax`` over the channel axis). ``maps`` [B,K,h,w]: each landmark channel of
    ``probs`` (background dropped) divided by its sum over the pixels, i.e. a distribution
    over the map whose mean is the landmark.
    """
    probs = F.softmax(logits.float(), dim=1)
    keypoints = probs[:, :-1]
    maps = keypoints / keypoints.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return maps, probs


def map_moments(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [B,K,2] (x, y) and covariance [B,K,2,2] of normalised maps, in normalised units.

    Positions are the pixel centres of the map in the ``[-1, 1]`` frame.
    """
    _, _, h, w = maps.shape
    xs = pixel_centres(w, device=maps.device, dtype=maps.dtype)
    ys = pixel_centres(h, device=maps.device, dtype=maps.dtype)
    px, py = maps.sum(dim=2), maps.sum(dim=3)  # marginals [B,K,w], [B,K,h]
    mx, my = (px * xs).sum(-1), (py * ys).sum(-1)
    dx = xs.view(1, 1, 1, w) - mx[..., None, None]
    dy = ys.view(1, 1, h, 1) - my[..., None, None]
    vxx = (maps * dx.square()).sum(dim=(-2, -1))
    vyy = (maps * dy.square()).sum(dim=(-2, -1))
    vxy = (maps * dx * dy).sum(dim=(-2, -1))
    cov = torch.stack([torch.stack([vxx, vxy], -1), torch.stack([vxy, vyy], -1)], -2)
    return torch.stack([mx, my], dim=-1), cov


def concentration_loss(cov: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``mean_b sum_k 2 pi e sigma_k^2`` with ``sigma_k = (sigma_x + sigma_y) / 2`` in [0, 1] units.

    Zhang et al.'s code (``gaussian2d_exp_entropy`` on the isotropic parameter that
    ``heatmap2structure_internal`` keeps): the *exponential of the entropy* of an isotropic
    Gaussian whose standard deviation is the mean of the map's two axis deviations. It is
    linear in the variance (not a log). ``cov`` [B,K,2,2] in normalised units; ``eps``
    (normalised units squared) keeps the square root differentiable at zero spread.
    """
    std = torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(eps).sqrt()  # [B,K,2]
    sigma = std.mean(-1) * UNIT_PER_NORMALISED
    return (TWO_PI_E * sigma.square()).sum(-1).mean()


def separation_loss(points: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``mean_b sum_{k != k'} exp(-|u_k - u_k'|^2 / (2 bandwidth^2))`` with distances in [0, 1] units.

    ``points`` [B,K,2] normalised; ``bandwidth`` in [0, 1] units (Zhang et al.: 0.08 for K=10).
    Ordered pairs, so each pair counts twice, as in the original.
    """
    u = points * UNIT_PER_NORMALISED
    sq = (u[:, :, None, :] - u[:, None, :, :]).square().sum(-1)
    vicinity = torch.exp(-sq / (2.0 * bandwidth**2))
    off_diagonal = ~torch.eye(points.shape[1], dtype=torch.bool, device=points.device)
    return (vicinity * off_diagonal).sum(dim=(-2, -1)).mean()


def equivariance_loss(points: torch.Tensor, mapped_back: torch.Tensor) -> torch.Tensor:
    """``mean_b sum_k |g^{-1}(u'_k) - u_k|^2`` in normalised units (the original's STN units).

    ``points`` [B,K,2]: landmarks ``u`` of the images; ``mapped_back`` [B,K,2]: the landmarks
    ``u'`` of the warped images taken back to the source frame by the warp's inverse (see
    :meth:`lmbench.warps.Warp.inverse_map_points`).
    """
    return (mapped_back - points).square().sum(dim=(-2, -1)).mean()


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, reference_pixels: int | None = None) -> torch.Tensor:
    """Zhang et al.'s reconstruction NLL without its constant: ``mean_b sum_pixels 0.5 (x - x_hat)^2``.

    Their decoder's output is a fixed-variance (sigma = 1) Gaussian on [0, 1] images whose
    negative log-likelihood is summed over every pixel and channel of an image. With
    ``reference_pixels`` = P the sum is counted as if the image had P pixels (the mean
    squared error times 0.5 * 3 * P): lmbench uses Zhang et al.'s 80 x 80, so that the
    balance with the geometric terms does not depend on the image size.
    """
    squared = (output.float() - target.float()).square()
    if reference_pixels is None:
        return 0.5 * squared.flatten(1).sum(-1).mean()
    return 0.5 * squared.mean() * output.shape[1] * reference_pixels


def piecewise_factor(step: int, milestones: list[int] | tuple[int, ...], factors: list[float] | tuple[float, ...]) -> float:
    """``factors[i]`` for ``milestones[i-1] <= step < milestones[i]`` (``len(factors) = len(milestones) + 1``)."""
    if len(factors) != len(milestones) + 1:
        raise ValueError(f"need one more factor than milestones, got {list(factors)} for {list(milestones)}")
    index = sum(step >= m for m in milestones)
    return float(factors[index])
