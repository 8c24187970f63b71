"""Labelled image grids (LR | bicubic | SR | HR side by side) for the demo, training samples and the
experiment report: a picture shows what PSNR cannot, and all three should look alike."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    img = Image.fromarray(tile)
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((4, 3), text)  # the box fits the text the font draws
    draw.rectangle((0, 0, right + 4, bottom + 3), fill=(0, 0, 0))
    draw.text((4, 3), text, fill=(255, 255, 255))
    return np.asarray(img)


def comparison_grid(rows: list[list[tuple[str, np.ndarray]]], gap: int = 4) -> Image.Image:
    """Rows of labelled, equally sized tiles on a white background."""
    height, width = rows[0][0][1].shape[:2]
    columns = max(len(row) for row in rows)
    canvas = np.full((len(rows) * (height + gap) + gap, columns * (width + gap) + gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, (text, tile) in enumerate(row):
            y, x = gap + r * (height + gap), gap + c * (width + gap)
            canvas[y:y + height, x:x + width] = _label(tile, text)
    return Image.fromarray(canvas)
