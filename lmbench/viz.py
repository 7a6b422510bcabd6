"""Pictures a person would rather look at: landmark overlays, a method's passes, sample grids."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lmbench import atomic


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated colours, one per landmark index."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 1.0)) for i in range(n)]


def _panel(image: np.ndarray, scale: int) -> Image.Image:
    h, w = image.shape[:2]
    return Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST)


def draw_points(panel: Image.Image, points: np.ndarray, colours, scale: int, *, hollow: bool = False, radius: int = 3):
    draw = ImageDraw.Draw(panel)
    for (x, y), colour in zip(points, colours):
        box = (x * scale - radius, y * scale - radius, x * scale + radius, y * scale + radius)
        if hollow:
            draw.ellipse(box, outline=colour, width=2)
        else:
            draw.ellipse(box, fill=colour, outline=(0, 0, 0))
    return panel


def save_grid(panels: list[Image.Image], path: str | Path, columns: int, pad: int = 4) -> None:
    w, h = panels[0].size
    rows = (len(panels) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, panel in enumerate(panels):
        r, c = divmod(i, columns)
        canvas.paste(panel, (pad + c * (w + pad), pad + r * (h + pad)))
    with atomic.atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def landmark_figure(
    images: np.ndarray,
    discovered: np.ndarray,
    regressed: np.ndarray,
    ground_truth: np.ndarray,
    path: str | Path,
    *,
    count: int = 8,
    scale: int = 4,
) -> None:
    """For each of ``count`` test faces: the K discovered points (one colour per index), and
    beside it the regressed points (filled) over the ground truth (hollow rings)."""
    count = min(count, len(images))
    k_colours = palette(discovered.shape[1])
    p_colours = palette(ground_truth.shape[1])
    panels = []
    for i in range(count):
        panels.append(draw_points(_panel(images[i], scale), discovered[i], k_colours, scale))
        gt = draw_points(_panel(images[i], scale), ground_truth[i], p_colours, scale, hollow=True, radius=5)
        panels.append(draw_points(gt, regressed[i], p_colours, scale))
    save_grid(panels, path, columns=4)


def sample_grid(images: np.ndarray, points: np.ndarray | None, path: str | Path, *, scale: int = 2, columns: int = 8) -> None:
    """A grid of dataset samples with their ground-truth points drawn."""
    panels = []
    for i in range(len(images)):
        panel = _panel(images[i], scale)
        if points is not None:
            draw_points(panel, points[i], palette(points.shape[1]), scale, radius=2)
        panels.append(panel)
    save_grid(panels, path, columns=min(columns, len(panels)))


def reconstruction_figure(rows: list[tuple[str, np.ndarray]], path: str | Path, *, scale: int = 2,
                          label_width: int = 190, pad: int = 4) -> None:
    """One labelled row per image batch a method showed (``LandmarkMethod.show``): its inputs,
    intermediate images and outputs, the same samples in every column. ``rows``: (label,
    uint8 [N, H, W, 3])."""
    if not rows:
        raise ValueError("no image rows to draw")
    n, h, w = rows[0][1].shape[:3]
    cell_w, cell_h = w * scale, h * scale
    canvas = Image.new("RGB", (label_width + n * (cell_w + pad) + pad, len(rows) * (cell_h + pad) + pad), (255, 255, 255))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=15)
    for r, (label, images) in enumerate(rows):
        top = pad + r * (cell_h + pad)
        draw.text((pad, top + cell_h // 2 - 8), label, fill=(0, 0, 0), font=font)
        for c in range(min(n, len(images))):
            canvas.paste(_panel(images[c], scale), (label_width + pad + c * (cell_w + pad), top))
    with atomic.atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
