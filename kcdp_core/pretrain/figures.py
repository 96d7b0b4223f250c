"""Compact PNG grids of 64 px images (VAE reconstructions, UNet samples), composed with PIL at native
resolution so the committed figures stay small and sharp."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GAP = 4


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def image_grid(
    rows: list[list[np.ndarray]],
    path: str | Path,
    row_labels: list[str] | None = None,
    header: str | None = None,
    label_width: int = 300,
    separators: tuple[int, ...] = (),
) -> Path:
    """rows of uint8 [S, S, 3] images; optional text to the right of each row and a header line.

    `separators`: column indices after which a wider gap is drawn (e.g. after the reference image)."""
    size = rows[0][0].shape[0]
    cols = max(len(r) for r in rows)
    extra = 3 * GAP * len(separators)
    top = 14 if header else 0
    width = cols * (size + GAP) + GAP + extra + (label_width if row_labels else 0)
    height = top + len(rows) * (size + GAP) + GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    if header:
        draw.text((GAP, 1), header, fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        y = top + GAP + r * (size + GAP)
        x = GAP
        for c, img in enumerate(row):
            canvas.paste(Image.fromarray(img), (x, y))
            draw.rectangle((x - 1, y - 1, x + size, y + size), outline=(200, 200, 200))
            x += size + GAP + (3 * GAP if c in separators else 0)
        if row_labels:
            lines = textwrap.wrap(row_labels[r], 48)[:4]
            draw.multiline_text(
                (cols * (size + GAP) + GAP + extra + 2, y + 2), "\n".join(lines), fill=(0, 0, 0), font=font
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A 256-colour palette keeps the committed PNGs small; emoji art survives it well.
    canvas.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path
