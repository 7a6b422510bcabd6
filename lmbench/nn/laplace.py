"""The LaplaceKL heatmap loss (Robinson, Li, Zhang, Fu, Tulyakov, "Laplace Landmark
Localization", ICCV 2019) and the heatmap-spread metric.

A detector's score map, turned into a distribution ``h = softmax(beta * logits)`` over the
pixel centres, has a mean ``s~ = E_h[x]`` (the softargmax) and a scale
``b = E_h[|x - s~|]`` (its mean absolute deviation). The loss reads ``(s~, b)`` as a Laplace
distribution and measures its KL divergence from a Laplace centred on the ground truth with
a fixed scale (1 heatmap pixel in the paper).

lmbench's choices (the paper's 2-D formulation is not reproduced verbatim):

- The 2-D Laplace is *factorised per axis*: ``L(s~_x, b_x) * L(s~_y, b_y)``. The KL of
  product distributions is the sum of the per-axis KLs, so the closed form below is exact
  for it.
- Everything is measured in *heatmap pixels*, so that the target scale's unit does not
  depend on the input resolution.
- ``direction="target_pred"`` (default) is KL(target || prediction), the paper's
  ``D_KL(q(s) || p(s~))`` with ``q`` the ground-truth Laplace; ``"pred_target"`` swaps them.
  Both are minimised by ``s~ = s``, ``b = target_scale``.
"""

from __future__ import annotations

import torch

from lmbench.nn.bottleneck import spatial_softmax

DIRECTIONS = ("target_pred", "pred_target")
#: Floor on a predicted scale (heatmap pixels), so that log(b) stays finite for a one-hot map.
MIN_SCALE = 1e-4


def laplace_kl(m1: torch.Tensor, b1: torch.Tensor, m2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """KL(Laplace(m1, b1) || Laplace(m2, b2)), elementwise, in closed form.

    ``log(b2 / b1) + |m1 - m2| / b2 + (b1 / b2) exp(-|m1 - m2| / b1) - 1``.
    """
    m1, b1, m2, b2 = (torch.as_tensor(v) for v in (m1, b1, m2, b2))
    d = (m1 - m2).abs()
    return torch.log(b2 / b1) + d / b2 + (b1 / b2) * torch.exp(-d / b1) - 1


def heatmap_moments(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and per-axis scale of normalised maps [B,K,h,w], both [B,K,2] in heatmap pixels.

    Pixel ``j`` has its centre at ``j + 0.5`` (the lmbench convention, see lmbench.data).
    The scale is ``E_h[|x - E_h[x]|]`` along x and along y separately.
    """
    _, _, h, w = probs.shape
    xs = torch.arange(w, device=probs.device, dtype=probs.dtype) + 0.5
    ys = torch.arange(h, device=probs.device, dtype=probs.dtype) + 0.5
    px, py = probs.sum(dim=2), probs.sum(dim=3)  # marginals [B,K,w], [B,K,h]
    mx, my = (px * xs).sum(-1), (py * ys).sum(-1)
    bx = (px * (xs - mx[..., None]).abs()).sum(-1)
    by = (py * (ys - my[..., None]).abs()).sum(-1)
    return torch.stack([mx, my], -1), torch.stack([bx, by], -1)


def normalized_to_heatmap_pixels(points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[-1, 1] (x, y) -> continuous heatmap pixel coordinates of a ``size = (h, w)`` map."""
    h, w = size
    return (points + 1) * points.new_tensor([w / 2, h / 2])


def heatmap_pixels_to_normalized(points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    return points / points.new_tensor([w / 2, h / 2]) - 1


def laplace_kl_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    beta: float,
    target_scale: float = 1.0,
    direction: str = "target_pred",
) -> torch.Tensor:
    """Mean LaplaceKL of score maps [B,K,h,w] against ground truth [B,K,2] in [-1, 1].

    Summed over the two axes, averaged over images and points.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"LaplaceKL direction must be one of {DIRECTIONS}, got {direction!r}")
    if target_scale <= 0:
        raise ValueError(f"LaplaceKL target_scale must be > 0 heatmap pixels, got {target_scale}")
    size = tuple(logits.shape[-2:])
    mean, scale = heatmap_moments(spatial_softmax(logits, 1.0 / beta))
    scale = scale.clamp_min(MIN_SCALE)
    truth = normalized_to_heatmap_pixels(target.float(), size)
    unit = torch.full_like(scale, float(target_scale))
    if direction == "target_pred":
        kl = laplace_kl(truth, unit, mean, scale)
    else:
        kl = laplace_kl(mean, scale, truth, unit)
    return kl.sum(-1).mean()


def heatmap_spread(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-image spread [B]: the scale ``b`` averaged over points and axes, in heatmap pixels.

    0 for a one-hot map; ``w / 4`` along an axis of even width ``w`` for a uniform map.
    """
    _, scale = heatmap_moments(spatial_softmax(logits, 1.0 / beta))
    return scale.mean(dim=(1, 2))


__all__ = [
    "DIRECTIONS",
    "heatmap_moments",
    "heatmap_pixels_to_normalized",
    "heatmap_spread",
    "laplace_kl",
    "laplace_kl_loss",
    "normalized_to_heatmap_pixels",
]
