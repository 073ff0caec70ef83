"""Score tables as a picture (a ComfyUI IMAGE row): one row per image or per step, with thumbnails.

Pillow's built-in bitmap font only, so the picture looks the same on every machine and needs no
font file.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PAD, ROW_TEXT_HEIGHT, CHAR_WIDTH = 8, 16, 6
TEXT, GRID, HEADER_FILL, HIGHLIGHT_FILL, MEAN_FILL = (0, 0, 0), (200, 200, 200), (225, 232, 245), (255, 238, 190), (240, 240, 240)


@dataclass(frozen=True)
class Table:
    """Cells as text; `thumbnails[i]` ([h, w, 3] float in [0, 1]) is drawn first in row i when given."""

    title: str
    header: list[str]
    rows: list[list[str]]
    thumbnails: list[np.ndarray] | None = None
    highlight: int | None = None  # index of a row to shade (the chosen step)
    footer_rows: int = 0  # the last rows are summaries (means), shaded grey
    max_cell_chars: int = 60


def _clip_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def draw_table(table: Table, thumbnail_size: int = 64) -> np.ndarray:
    """[H, W, 3] float32 in [0, 1]: the title, a shaded header row, then the rows."""
    cells = [[_clip_text(c, table.max_cell_chars) for c in row] for row in [table.header] + table.rows]
    columns = max(len(row) for row in cells)
    widths = [max(len(row[c]) if c < len(row) else 0 for row in cells) * CHAR_WIDTH + 2 * PAD for c in range(columns)]
    thumb = thumbnail_size + PAD if table.thumbnails else 0
    row_height = max(ROW_TEXT_HEIGHT + PAD, thumbnail_size + PAD if table.thumbnails else 0)
    header_height = ROW_TEXT_HEIGHT + PAD
    title_height = ROW_TEXT_HEIGHT + 2 * PAD
    width = max(PAD + thumb + sum(widths) + PAD, len(table.title) * CHAR_WIDTH + 2 * PAD)
    height = title_height + header_height + row_height * len(table.rows) + PAD
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((PAD, PAD), table.title, fill=TEXT, font=font)

    def draw_row(values: list[str], top: int, height: int, fill: tuple[int, int, int] | None) -> None:
        if fill:
            draw.rectangle([PAD, top, width - PAD, top + height], fill=fill)
        x = PAD + thumb
        for value, column_width in zip(values, widths):
            draw.text((x + PAD, top + (height - ROW_TEXT_HEIGHT) // 2 + 2), value, fill=TEXT, font=font)
            x += column_width
        draw.line([PAD, top + height, width - PAD, top + height], fill=GRID)

    draw_row(cells[0], title_height, header_height, HEADER_FILL)
    first_footer = len(table.rows) - table.footer_rows
    for index, values in enumerate(cells[1:]):
        top = title_height + header_height + index * row_height
        fill = HIGHLIGHT_FILL if index == table.highlight else MEAN_FILL if index >= first_footer else None
        draw_row(values, top, row_height, fill)
        if table.thumbnails and index < len(table.thumbnails):
            picture = np.clip(np.asarray(table.thumbnails[index], dtype=np.float32) * 255.0, 0, 255).astype(np.uint8)
            small = Image.fromarray(picture).convert("RGB")
            small.thumbnail((thumbnail_size, thumbnail_size))
            image.paste(small, (PAD, top + PAD // 2))
    return np.asarray(image, dtype=np.float32) / 255.0
