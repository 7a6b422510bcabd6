"""The landmark bottleneck: softargmax coordinates and Gaussian heatmap rendering.

Coordinates are normalised to [-1, 1] with the ``align_corners=False`` convention: the
centre of heatmap column ``j`` of ``w`` is at ``(2 j + 1) / w - 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_centres(size: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised coordinates of the ``size`` pixel centres along one axis."""
    return (torch.arange(size, device=device, dtype=dtype) * 2 + 1) / size - 1


def spatial_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax of ``logits / temperature`` over each map's pixels: [B,K,h,w] -> [B,K,h,w]."""
    b, k, h, w = logits.shape
    probs = F.softmax(logits.float().reshape(b, k, h * w) / temperature, dim=-1)
    return probs.reshape(b, k, h, w)


def expected_coordinates(probs: torch.Tensor) -> torch.Tensor:
    """Expected (x, y) of each normalised map [B,K,h,w] -> [B,K,2] in [-1, 1]."""
    _, _, h, w = probs.shape
    xs = pixel_centres(w, device=probs.device, dtype=probs.dtype)
    ys = pixel_centres(h, device=probs.device, dtype=probs.dtype)
    x = (probs.sum(dim=2) * xs).sum(dim=-1)
    y = (probs.sum(dim=3) * ys).sum(dim=-1)
    return torch.stack([x, y], dim=-1)


def softargmax(logits: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Differentiable argmax of each map: [B,K,h,w] -> (x, y) in [-1, 1], [B,K,2].

    ``temperature`` T divides the logits (Sanchez: T = 0.1; Li et al.'s beta = 1 / T).
    """
    return expected_coordinates(spatial_softmax(logits, temperature))


def render_gaussians(points: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """Gaussian maps ``exp(-d^2 / (2 sigma^2))`` centred on ``points`` [B,K,2] -> [B,K,h,w].

    ``sigma`` is in heatmap pixels (Sanchez: exp(-d^2 / 0.5) at 32 x 32, i.e. sigma = 0.5).
    """
    h, w = size
    xs = pixel_centres(w, device=points.device, dtype=points.dtype)
    ys = pixel_centres(h, device=points.device, dtype=points.dtype)
    # Distances in heatmap pixels: one normalised unit is w / 2 pixels.
    dx = (xs.view(1, 1, 1, w) - points[..., 0, None, None]) * (w / 2)
    dy = (ys.view(1, 1, h, 1) - points[..., 1, None, None]) * (h / 2)
    return torch.exp(-(dx.square() + dy.square()) / (2 * sigma**2))


class LandmarkBottleneck(torch.nn.Module):
    """Detector maps -> K points -> re-rendered Gaussian heatmaps."""

    def __init__(self, temperature: float = 0.1, sigma: float = 0.5):
        super().__init__()
        self.temperature = temperature
        self.sigma = sigma

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        points = softargmax(logits, self.temperature)
        return points, render_gaussians(points, logits.shape[-2:], self.sigma)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, sigma={self.sigma}"
