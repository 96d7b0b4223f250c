"""Small synthetic emoji-like domains for the training tests (drawn with PIL, no downloads)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kcdp_core.portable.labels import EMOJI7


def make_domain(root: Path, fill: tuple[int, int, int], per_class: int = 3, seed: int = 0) -> Path:
    """root/<label>/<label>_<j>.png: a face whose mouth depends on the class, in one colour style."""
    rng = np.random.default_rng(seed)
    for ci, label in enumerate(EMOJI7):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            img = Image.new("RGB", (64, 64), (255, 255, 255))
            draw = ImageDraw.Draw(img)
            draw.ellipse((8, 8, 56, 56), fill=fill, outline=(0, 0, 0), width=2)
            draw.arc((20, 26 + 2 * ci, 44, 46), 0, 180 if ci % 2 else 360, fill=(0, 0, 0), width=2)
            points = [(int(rng.integers(10, 54)), int(rng.integers(10, 54))) for _ in range(12)]
            draw.point(points, fill=(ci * 35, 0, 0))
            img.save(folder / f"{label}_{j}.png")
    return root


def write_manifest(folder: Path, out: Path, shuffle_labels: bool = False, seed: int = 0) -> Path:
    """A CSV manifest path,label over a class folder, files in sorted order; labels optionally shuffled."""
    rows = [(p, p.parent.name) for p in sorted(folder.rglob("*.png"))]
    labels = [label for _, label in rows]
    if shuffle_labels:
        random.Random(seed).shuffle(labels)
        assert labels != [label for _, label in rows]
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for (path, _), label in zip(rows, labels, strict=True):
            writer.writerow([str(path), label])
    return out


def slowed_training_steps(seconds: float) -> str:
    """Python source that pauses after every training step; put before a subprocess's script so that a
    test can kill the run mid-epoch."""
    return f"""
import time
from kcdp_core.train import trainer
_step = trainer.training_step
def _slow_step(*args, **kwargs):
    out = _step(*args, **kwargs)
    time.sleep({seconds})
    return out
trainer.training_step = _slow_step
"""
