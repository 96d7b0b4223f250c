"""Image loading and preprocessing in numpy/PIL, identical at training and inference time.

Every graph takes pixels as float32 RGB in [0, 1], NCHW, at a square size; each model normalises
inside its own graph (the authors' code normalised twice; here nobody does it outside).
Torch-free.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Refuse decompression bombs outright instead of warning: 8k x 8k is ample for emotion recognition.
MAX_PIXELS = 8192 * 8192
RESIZE_FILTER = "bicubic"
_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageError(ValueError):
    """An input that is not a usable image; the message names the file and the problem."""


def load_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Open an image file (or bytes) as RGB: first frame, EXIF-rotated, transparency on white.

    Raises ImageError naming the file and the problem for anything that is not a usable image.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{label}: no such file")
        if path.is_dir():
            raise ImageError(f"{label}: is a directory, not an image")
        data = path.read_bytes()
    if not data:
        raise ImageError(f"{label}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(
                    f"{label}: {img.width}x{img.height} pixels exceeds the limit of {MAX_PIXELS}"
                )
            img.seek(0)  # animated GIF/WebP/PNG: the first frame
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{label}: decompression bomb refused ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: truncated or corrupt image ({exc})") from None
    if img.width < 2 or img.height < 2:
        raise ImageError(f"{label}: image is {img.width}x{img.height}, too small to classify")
    img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB on a white background, whatever the mode (palette+transparency, LA, RGBA, CMYK, 16-bit)."""
    if img.mode.startswith("I;16"):
        # 16-bit samples: scale by the type's range, not by the image's maximum (a dark image stays dark).
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8))
    elif img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr / (257.0 if arr.max() > 255 else 1.0), 0, 255).astype(np.uint8))
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:
        # a palette index or colour key marked transparent (GIF, PNG tRNS): composite it like alpha
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def preprocess(img: Image.Image, size: int, resize_filter: str = RESIZE_FILTER) -> np.ndarray:
    """Square-pad on white, resize to size x size, return float32 CHW in [0, 1]."""
    side = max(img.width, img.height)
    if img.width != img.height:
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        img = canvas
    if img.size != (size, size):
        img = img.resize((size, size), _FILTERS[resize_filter])
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_pixels(source: str | Path | bytes, size: int, name: str | None = None) -> np.ndarray:
    """load_image + preprocess: float32 [3, size, size] in [0, 1]."""
    return preprocess(load_image(source, name=name), size)
