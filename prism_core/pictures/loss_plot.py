"""Loss curves as a picture: one panel per curve, raw values faint, a moving average on top.

Per-step diffusion losses are dominated by the random timestep, so the raw curve is mostly noise;
the moving average (window ~ 1/10 of the run) is what shows whether training still improves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL_WIDTH, PANEL_HEIGHT, MARGIN = 640, 200, 48
RAW_COLOUR, MEAN_COLOUR, AXIS_COLOUR, TEXT_COLOUR = (170, 190, 235), (20, 60, 170), (120, 120, 120), (0, 0, 0)


@dataclass(frozen=True)
class Curve:
    title: str
    values: list[float]  # one per optimizer step; NaN where not computed


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to `window` finite values (NaNs skipped); same length as `values`."""
    finite = np.isfinite(values)
    sums = np.cumsum(np.where(finite, values, 0.0))
    counts = np.cumsum(finite)
    start = np.maximum(np.arange(len(values)) - window, -1)
    prev_sums = np.where(start >= 0, sums[np.maximum(start, 0)], 0.0)
    prev_counts = np.where(start >= 0, counts[np.maximum(start, 0)], 0)
    n = counts - prev_counts
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums - prev_sums) / np.maximum(n, 1), np.nan)


def _points(values: np.ndarray, low: float, high: float, top: int) -> list[tuple[float, float]]:
    span = (high - low) or 1.0
    steps = max(len(values) - 1, 1)
    return [(MARGIN + PANEL_WIDTH * i / steps, top + PANEL_HEIGHT * (1 - (v - low) / span))
            for i, v in enumerate(values) if math.isfinite(v)]


def _panel(draw: ImageDraw.ImageDraw, curve: Curve, top: int, font: ImageFont.ImageFont) -> None:
    values = np.asarray(curve.values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    draw.rectangle([MARGIN, top, MARGIN + PANEL_WIDTH, top + PANEL_HEIGHT], outline=AXIS_COLOUR)
    if finite.size == 0:
        draw.text((MARGIN + 8, top + 8), f"{curve.title}: no values", fill=TEXT_COLOUR, font=font)
        return
    low, high = float(finite.min()), float(finite.max())
    average = moving_average(values, max(1, len(values) // 10))
    for series, colour, width in ((values, RAW_COLOUR, 1), (average, MEAN_COLOUR, 2)):
        points = _points(series, low, high, top)
        if len(points) > 1:
            draw.line(points, fill=colour, width=width)
        elif points:
            x, y = points[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    last = average[np.isfinite(average)][-1]
    draw.text((MARGIN + 8, top + 6), f"{curve.title}   steps {len(values)}   last (avg) {last:.4g}", fill=TEXT_COLOUR, font=font)
    draw.text((4, top), f"{high:.3g}", fill=TEXT_COLOUR, font=font)
    draw.text((4, top + PANEL_HEIGHT - 12), f"{low:.3g}", fill=TEXT_COLOUR, font=font)


def draw_curves(curves: list[Curve]) -> np.ndarray:
    """[H, W, 3] float32 in [0, 1] (a ComfyUI IMAGE row) with one panel per curve, top to bottom."""
    if not curves:
        raise ValueError("Nothing to plot: connect the tokens (Stage 1 curves) and/or the Stage 2 loss.")
    height = len(curves) * (PANEL_HEIGHT + MARGIN) + MARGIN // 2
    image = Image.new("RGB", (PANEL_WIDTH + 2 * MARGIN, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for index, curve in enumerate(curves):
        _panel(draw, curve, MARGIN // 2 + index * (PANEL_HEIGHT + MARGIN), font)
    return np.asarray(image, dtype=np.float32) / 255.0
