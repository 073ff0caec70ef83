"""The trade-off picture of paper Fig. 3: CLIP-T (text alignment) against DINO (concept fidelity),
one point per Stage 2 step joined in step order, the chosen step starred, the rule's CLIP-T floor dashed."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..judging.sweep import SweepPoint

WIDTH, HEIGHT, MARGIN = 640, 480, 64
LINE, POINT, CHOSEN, FLOOR, AXIS, TEXT = (20, 60, 170), (20, 60, 170), (220, 120, 0), (200, 60, 60), (120, 120, 120), (0, 0, 0)


def _range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or max(abs(high) * 0.05, 1e-3)
    return low - pad, high + pad


def _star(draw: ImageDraw.ImageDraw, x: float, y: float, radius: float) -> None:
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((x + r * math.cos(angle), y + r * math.sin(angle)))
    draw.polygon(points, fill=CHOSEN, outline=TEXT)


def draw_tradeoff(points: list[SweepPoint], chosen_step: int | None = None, clip_t_floor: float | None = None,
                  title: str = "") -> np.ndarray:
    """[H, W, 3] float32 in [0, 1]. x: mean DINO, y: mean CLIP-T; each point labelled with its step.

    Raises when there are no points or a point has a NaN score.
    """
    if not points or any(math.isnan(v) for p in points for v in (p.dino, p.clip_t)):
        raise ValueError("Nothing to plot: the sweep needs CLIP-T and DINO for every step.")
    points = sorted(points, key=lambda p: p.step)
    x_low, x_high = _range([p.dino for p in points])
    y_values = [p.clip_t for p in points] + ([clip_t_floor] if clip_t_floor is not None else [])
    y_low, y_high = _range(y_values)
    left, top, right, bottom = MARGIN, MARGIN // 2 + 16, WIDTH - MARGIN // 2, HEIGHT - MARGIN

    def at(dino: float, clip_t: float) -> tuple[float, float]:
        return (left + (right - left) * (dino - x_low) / (x_high - x_low),
                bottom - (bottom - top) * (clip_t - y_low) / (y_high - y_low))

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.rectangle([left, top, right, bottom], outline=AXIS)
    draw.text((left, 8), title or "CLIP-T against DINO over Stage 2 steps (paper Fig. 3)", fill=TEXT, font=font)
    draw.text(((left + right) // 2 - 90, bottom + 26), "DINO (concept fidelity) ->", fill=TEXT, font=font)
    draw.text((4, top - 14), "CLIP-T (text alignment)", fill=TEXT, font=font)
    for value, (x, y) in ((x_low, (left, bottom + 6)), (x_high, (right - 40, bottom + 6))):
        draw.text((x, y), f"{value:.3f}", fill=TEXT, font=font)
    for value, y in ((y_high, top), (y_low, bottom - 12)):
        draw.text((4, y), f"{value:.3f}", fill=TEXT, font=font)
    if clip_t_floor is not None:
        _, y = at(x_low, clip_t_floor)
        for x in range(left, right, 12):
            draw.line([x, y, min(x + 6, right), y], fill=FLOOR, width=1)
        draw.text((right - 150, y - 14), "CLIP-T floor of the rule", fill=FLOOR, font=font)
    xy = [at(p.dino, p.clip_t) for p in points]
    if len(xy) > 1:
        draw.line(xy, fill=LINE, width=2)
    for p, (x, y) in zip(points, xy):
        if p.step == chosen_step:
            _star(draw, x, y, 10)
        else:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=POINT)
        draw.text((x + (14 if p.step == chosen_step else 8), y - 6), str(p.step), fill=TEXT, font=font)
    return np.asarray(image, dtype=np.float32) / 255.0
