"""Augmentations that change how a face is drawn and keep what it expresses (issue 26).

A model trained on a few drawing styles learns their expression templates (this mouth shape in
this palette) instead of expressions; each transform below removes one cue a new style will not
share: palette (channel permutation, grayscale elsewhere), shading (flat fills), fills altogether
(line art of the edges, at a random stroke width), background, and the face's size in the frame.
The expression lives in geometry (brows, eyes, mouth), which all of them keep.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps


def permute_channels(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Another palette: the RGB channels in a random non-identity order."""
    order = [(0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)][int(rng.integers(5))]
    channels = img.split()
    return Image.merge("RGB", [channels[c] for c in order])


def flat_fills(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Shading removed: the image quantised to 3-6 flat colours."""
    colours = int(rng.integers(3, 7))
    return img.quantize(colours, method=Image.Quantize.MEDIANCUT).convert("RGB")


def line_art(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Fills removed: dark strokes on the edges of the drawing, 1-3 px wide, on white."""
    return edge_drawing(img, threshold=int(rng.integers(20, 60)), width=int(rng.integers(0, 2)) * 2 + 1)


def edge_drawing(img: Image.Image, threshold: int = 40, width: int = 1) -> Image.Image:
    """Dark strokes `width` px wide (odd) where the grey level changes by more than `threshold`, on white."""
    edges = ImageOps.grayscale(img).filter(ImageFilter.FIND_EDGES)
    lines = edges.point(lambda v: 0 if v > threshold else 255)
    if width > 1:
        lines = lines.filter(ImageFilter.MinFilter(width))
    # FIND_EDGES marks the frame itself: keep it white.
    return ImageOps.expand(ImageOps.crop(lines, 2), 2, fill=255).convert("RGB")


def background(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Another background: flood-filled from the four corners with a random colour (only where
    the corner's region is near-uniform, so a drawing that fills its frame keeps its pixels)."""
    out = img.copy()
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    w, h = out.size
    for xy in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)):
        if out.getpixel(xy) != colour:
            ImageDraw.floodfill(out, xy, colour, thresh=12)
    return out


def shrink(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A smaller face in the frame (full-body avatars and stickers with margins): scaled to
    55-90% and pasted at a random place on the image's own corner colour."""
    w, h = img.size
    scale = float(rng.uniform(0.55, 0.9))
    small = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (w, h), img.getpixel((0, 0)))
    x = int(rng.integers(0, w - small.width + 1))
    y = int(rng.integers(0, h - small.height + 1))
    canvas.paste(small, (x, y))
    return canvas


TRANSFORMS = (permute_channels, flat_fills, line_art, background, shrink)


def restyle(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One or two of the transforms, drawn at random (line art after the others, which it erases)."""
    n = 1 + int(rng.random() < 0.3)
    picked = sorted(
        rng.choice(len(TRANSFORMS), size=n, replace=False), key=lambda i: TRANSFORMS[i] is line_art
    )
    for i in picked:
        img = TRANSFORMS[i](img.convert("RGB"), rng)
    return img
