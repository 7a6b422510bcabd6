"""Small PNG charts drawn with Pillow (no matplotlib): line charts and grouped bar charts.

Each chart has a frame, "nice" ticks with grid lines, axis labels, a title and a legend.
Everything is drawn at ``SCALE`` x the nominal size for crisp text and then kept as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from lmbench import atomic

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
GRID = (225, 225, 225)
INK = (30, 30, 30)
MARGIN = {"left": 78, "right": 24, "top": 44, "bottom": 62}
LEGEND_ROW = 18  # px per legend entry, below the chart


@dataclass
class Series:
    """One line: x, y, optional symmetric error band ``yerr``, optional dashed style."""

    label: str
    x: list[float]
    y: list[float]
    yerr: list[float] | None = None
    dashed: bool = False
    colour: tuple[int, int, int] | None = None
    markers: bool = True
    extra: dict = field(default_factory=dict)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (the classic 1-2-5 steps)."""
    if not math.isfinite(low) or not math.isfinite(high):
        raise ValueError(f"cannot place ticks on [{low}, {high}]")
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step + 1e-9) * step
    ticks, value = [], start
    while value <= high + step * 1e-6:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:g}"
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _fit_legend(size: tuple[int, int], labels: list[str]) -> tuple[int, int]:
    """``size`` widened, if need be, so that the longest legend label fits below the chart."""
    font = _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    longest = max((probe.textlength(label, font=font) for label in labels), default=0)
    return max(size[0], int(MARGIN["left"] + 30 + longest + 12)), size[1]


class Canvas:
    """A plotting area with data -> pixel transforms (linear or log10 x)."""

    def __init__(self, width: int, height: int, xlim, ylim, *, log_x: bool = False, legend_rows: int = 0):
        # The legend goes below the chart, in LEGEND_ROW px per entry added to ``height``, so that
        # long labels (method variants) never cover the data.
        self.chart_height = height
        total = height + (LEGEND_ROW * legend_rows + 12 if legend_rows else 0)
        self.image = Image.new("RGB", (width, total), (255, 255, 255))
        self.draw = ImageDraw.Draw(self.image)
        self.box = (MARGIN["left"], MARGIN["top"], width - MARGIN["right"], height - MARGIN["bottom"])
        self.log_x = log_x
        self.xlim = tuple(math.log10(v) for v in xlim) if log_x else tuple(xlim)
        self.ylim = tuple(ylim)
        self.small, self.normal, self.big = _font(12), _font(14), _font(16)

    def px(self, x: float, y: float) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        xv = math.log10(x) if self.log_x else x
        fx = (xv - self.xlim[0]) / ((self.xlim[1] - self.xlim[0]) or 1.0)
        fy = (y - self.ylim[0]) / ((self.ylim[1] - self.ylim[0]) or 1.0)
        return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)

    def text(self, xy, text: str, font, anchor: str = "la", fill=INK) -> None:
        self.draw.text(xy, text, font=font, fill=fill, anchor=anchor)

    def axes(self, xticks, yticks, *, title: str, xlabel: str, ylabel: str, xtick_labels=None) -> None:
        x0, y0, x1, y1 = self.box
        for value in yticks:
            _, y = self.px(self._xmin(), value)
            self.draw.line([(x0, y), (x1, y)], fill=GRID)
            self.draw.line([(x0 - 5, y), (x0, y)], fill=INK)
            self.text((x0 - 8, y), _label(value), self.small, "rm")
        for i, value in enumerate(xticks):
            x, _ = self.px(value, self.ylim[0])
            self.draw.line([(x, y1), (x, y1 + 5)], fill=INK)
            self.text((x, y1 + 8), xtick_labels[i] if xtick_labels else _label(value), self.small, "ma")
        self.draw.rectangle(self.box, outline=INK)
        self.text(((x0 + x1) / 2, 12), title, self.big, "ma")
        self.text(((x0 + x1) / 2, y1 + 32), xlabel, self.normal, "ma")
        self._vertical_label(ylabel, ((y0 + y1) / 2))

    def _xmin(self) -> float:
        return 10 ** self.xlim[0] if self.log_x else self.xlim[0]

    def _vertical_label(self, text: str, centre_y: float) -> None:
        width = int(self.draw.textlength(text, font=self.normal)) + 4
        label = Image.new("RGB", (width, 20), (255, 255, 255))
        ImageDraw.Draw(label).text((2, 2), text, font=self.normal, fill=INK)
        rotated = label.rotate(90, expand=True)
        self.image.paste(rotated, (8, int(centre_y - rotated.size[1] / 2)))

    def legend(self, entries: list[tuple[str, tuple[int, int, int], bool]]) -> None:
        """Entries (label, colour, dashed), one per row below the chart (see ``legend_rows``)."""
        if not entries:
            return
        left = MARGIN["left"]
        for i, (label, colour, dashed) in enumerate(entries):
            y = self.chart_height + 4 + LEGEND_ROW * i + LEGEND_ROW / 2
            self._segment((left, y), (left + 24, y), colour, dashed)
            self.text((left + 30, y), label, self.small, "lm")

    def _segment(self, a, b, colour, dashed: bool, width: int = 2) -> None:
        if not dashed:
            self.draw.line([a, b], fill=colour, width=width)
            return
        length = math.dist(a, b)
        pieces = max(int(length // 6), 1)
        for i in range(0, pieces, 2):
            t0, t1 = i / pieces, min((i + 1) / pieces, 1.0)
            self.draw.line([(a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0),
                            (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)], fill=colour, width=width)

    def save(self, path: str | Path) -> Path:
        with atomic.atomic_path(path) as tmp:
            self.image.save(tmp, format="PNG")
        return Path(path)


def _limits(values: list[float], pad: float = 0.05) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    span = (high - low) or abs(high) or 1.0
    return low - pad * span, high + pad * span


def line_chart(series: list[Series], path: str | Path, *, title: str, xlabel: str, ylabel: str,
               log_x: bool = False, ylim: tuple[float, float] | None = None, size=(720, 440)) -> Path:
    """Lines (with optional error bands) and a legend; ``log_x`` puts x on a log10 axis."""
    if not series or not any(s.x for s in series):
        raise ValueError(f"{path}: nothing to plot")
    xs = [x for s in series for x in s.x]
    if log_x and min(xs) <= 0:
        raise ValueError(f"{path}: a log x axis needs positive x values")
    ys = [y + sign * e for s in series for y, e in zip(s.y, s.yerr or [0] * len(s.y)) for sign in (-1, 1)]
    if ylim is None:
        low, high = _limits(ys)
        if all(y >= 0 for s in series for y in s.y):
            low = max(low, 0.0)  # errors, fractions: no negative axis
        ticks = nice_ticks(low, high)
        ylim = (ticks[0], ticks[-1])
    else:
        ticks = nice_ticks(*ylim)
        ticks = [t for t in ticks if ylim[0] - 1e-9 <= t <= ylim[1] + 1e-9]
    if log_x:
        lo, hi = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
        hi = max(hi, lo + 1)
        xticks = [10.0 ** e for e in range(lo, hi + 1)]
        xlim = (xticks[0], xticks[-1])
    else:
        xticks = nice_ticks(min(xs), max(xs))
        xlim = (xticks[0], xticks[-1])
    canvas = Canvas(*_fit_legend(size, [s.label for s in series]), xlim, ylim, log_x=log_x, legend_rows=len(series))
    canvas.axes(xticks, ticks, title=title, xlabel=xlabel, ylabel=ylabel)
    entries = []
    for i, s in enumerate(series):
        colour = s.colour or COLOURS[i % len(COLOURS)]
        points = [canvas.px(x, y) for x, y in zip(s.x, s.y)]
        if s.yerr:
            clip = lambda v: min(max(v, ylim[0]), ylim[1])  # noqa: E731 - keep the band inside the axes
            band = [canvas.px(x, clip(y + e)) for x, y, e in zip(s.x, s.y, s.yerr)]
            band += [canvas.px(x, clip(y - e)) for x, y, e in reversed(list(zip(s.x, s.y, s.yerr)))]
            overlay = Image.new("RGBA", canvas.image.size, (0, 0, 0, 0))
            ImageDraw.Draw(overlay).polygon(band, fill=(*colour, 50))
            canvas.image.paste(overlay, (0, 0), overlay)
            canvas.draw = ImageDraw.Draw(canvas.image)
        for a, b in zip(points[:-1], points[1:]):
            canvas._segment(a, b, colour, s.dashed)
        if s.markers:
            for x, y in points:
                canvas.draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        entries.append((s.label, colour, s.dashed))
    canvas.legend(entries)
    return canvas.save(path)


def bar_chart(categories: list[str], groups: dict[str, list[float]], path: str | Path, *, title: str,
              ylabel: str, xlabel: str = "", errors: dict[str, list[float]] | None = None, size=(720, 440)) -> Path:
    """Grouped bars: one group per category, one bar (colour) per entry of ``groups``."""
    if not categories or not groups:
        raise ValueError(f"{path}: nothing to plot")
    for name, values in groups.items():
        if len(values) != len(categories):
            raise ValueError(f"{path}: group {name!r} has {len(values)} values for {len(categories)} categories")
    errors = errors or {}
    tops = [v + (errors.get(name) or [0] * len(vals))[i] for name, vals in groups.items() for i, v in enumerate(vals)]
    ticks = nice_ticks(0.0, max([t for t in tops if math.isfinite(t)] or [1.0]) * 1.05)
    canvas = Canvas(*_fit_legend(size, list(groups)), (0, len(categories)), (ticks[0], ticks[-1]),
                    legend_rows=len(groups))
    centres = [i + 0.5 for i in range(len(categories))]
    canvas.axes(centres, ticks, title=title, xlabel=xlabel, ylabel=ylabel, xtick_labels=categories)
    slot = 0.8 / len(groups)
    entries = []
    for g, (name, values) in enumerate(groups.items()):
        colour = COLOURS[g % len(COLOURS)]
        for i, value in enumerate(values):
            if not math.isfinite(value):
                continue
            left = i + 0.1 + g * slot
            (xa, ya), (xb, yb) = canvas.px(left, value), canvas.px(left + slot * 0.9, 0.0)
            canvas.draw.rectangle((xa, ya, xb, yb), fill=colour)
            err = (errors.get(name) or [0.0] * len(values))[i]
            if err > 0:
                xm = (xa + xb) / 2
                _, top = canvas.px(0, value + err)
                _, bottom = canvas.px(0, max(value - err, 0.0))
                canvas.draw.line([(xm, top), (xm, bottom)], fill=INK, width=1)
                canvas.draw.line([(xm - 3, top), (xm + 3, top)], fill=INK, width=1)
        entries.append((name, colour, False))
    canvas.legend(entries)
    return canvas.save(path)


def is_png(path: str | Path) -> bool:
    """True when ``path`` is a PNG that Pillow can fully decode."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.format == "PNG"
    except OSError:
        return False


__all__ = ["Series", "line_chart", "bar_chart", "nice_ticks", "is_png"]
