"""Values that training, export and the torch-free runtime must agree on, defined once. Torch-free
(standard library only), so the runtime may import it.
"""

from __future__ import annotations

import os
from pathlib import Path

# Image files every folder walk picks up (datasets, the knowledge cache, calibration, kcdp-infer, kcdp-bench):
# what kcdp_core.portable.images reads (SVG is rasterised with resvg).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".svg"})

# A top-k retrieval captioner joins its k bank captions with this into one caption (training's
# captioner and the runtime's alike; an export records it as knowledge.retrieval_separator).
CAPTION_SEPARATOR = ". "


def cache_root() -> Path:
    """$KCDP_CACHE, else ~/.cache/kcdp: the tiny foundation, knowledge and k caches, npm tarballs,
    parsed captions and onnxruntime's optimised graphs all live below it."""
    root = os.environ.get("KCDP_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "kcdp"
