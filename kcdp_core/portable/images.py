"""Image loading and preprocessing in numpy/PIL, identical at training and inference time.

Every graph takes pixels as float32 RGB in [0, 1], NCHW, at a square size; each model normalises
inside its own graph (the authors' code normalised twice; here nobody does it outside).
Torch-free. Raster formats are decoded by Pillow; SVG (a common sticker and avatar format) is
rasterised by resvg, the renderer the data builder draws its SVG emoji and avatars with.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
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
# An SVG is rasterised to fit a square of this side (aspect kept) unless the caller names the model's
# input size (the runtime does: drawn at the size the model sees, as the data builder draws avatars).
# The square also bounds the canvas whatever size the document claims: resvg aborts the process,
# rather than raising, when a claimed size cannot be allocated. Cost grows with the area (fun-emoji
# avatar on this 2-core machine: about 2 ms at 96 px, 23 ms at 256, 80 ms at 512).
SVG_SIDE = 256
# The face view (perception.face_view): where a drawn head or bust keeps brows, eyes and mouth, as
# fractions (left, top, right, bottom) of the square-padded image; 70% of the side, from 8% below the
# top (checked on contact sheets of the training styles; benchmarks/view_probe.py measures it).
FACE_BOX = (0.15, 0.08, 0.85, 0.78)
# Frames classified of an animated GIF / WebP / PNG, spread evenly from the first frame on.
MAX_FRAMES = 4
# An SVG may only reference its own elements (#id) or embedded data: resvg would read any other
# href from this machine's disk (a path of the server, or a device that never ends).
_HREF = re.compile(rb"""href\s*=\s*(["'])(.*?)\1""", re.DOTALL)
_SVG_START = re.compile(
    rb"^(\xef\xbb\xbf)?\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*|<!DOCTYPE[^[>]*(\[.*?\])?\s*>\s*)*<svg\b", re.DOTALL
)


class ImageError(ValueError):
    """An input that is not a usable image; the message names the file and the problem."""


@dataclass
class Frames:
    """The frames of an image chosen for classification: one for a still image."""

    images: list[Image.Image]
    indices: list[int]  # their positions in the animation
    count: int  # frames in the file

    @property
    def animated(self) -> bool:
        return self.count > 1


def load_image(source: str | Path | bytes | Image.Image | np.ndarray, name: str | None = None) -> Image.Image:
    """Open an image file (or bytes) as RGB: first frame, EXIF-rotated, transparency on white.

    Raises ImageError naming the file and the problem for anything that is not a usable image.
    """
    return load_frames(source, name=name, max_frames=1).images[0]


def load_frames(
    source: str | Path | bytes | Image.Image | np.ndarray,
    name: str | None = None,
    max_frames: int = MAX_FRAMES,
    svg_side: int = SVG_SIDE,
) -> Frames:
    """Open an image file (or bytes) as RGB frames: a still image gives one; an animation up to
    max_frames spread evenly through it (frame i * count // k, so the first frame is always one).
    An image already decoded (a PIL image, or a uint8 array H x W, H x W x 3 or H x W x 4) is one frame.

    Raises ImageError naming the file and the problem for anything that is not a usable image.
    """
    label = name or (str(source) if isinstance(source, str | Path) else f"<{type(source).__name__}>")
    if isinstance(source, np.ndarray):
        channels_ok = source.ndim == 2 or (source.ndim == 3 and source.shape[2] in (3, 4))
        if source.dtype != np.uint8 or not channels_ok:
            raise ImageError(
                f"{label}: an array of {source.dtype} with shape {source.shape}; "
                "expected uint8 H x W (grey), H x W x 3 (RGB) or H x W x 4 (RGBA)"
            )
        source = Image.fromarray(source)
    if isinstance(source, Image.Image):  # as its file would give it: EXIF-rotated, its current frame
        return Frames([_checked(ImageOps.exif_transpose(source), label)], [0], 1)
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
    if is_svg(data):
        return Frames([_checked(render_svg(data, label, svg_side), label)], [0], 1)
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
            count = max(1, int(getattr(img, "n_frames", 1)))
            k = max(1, min(max_frames, count))
            indices = [i * count // k for i in range(k)]
            frames = []
            for index in indices:
                img.seek(index)  # Pillow composites GIF/WebP/APNG frames onto the ones before
                img.load()
                frames.append(_checked(ImageOps.exif_transpose(img), label))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{label}: decompression bomb refused ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{label}: truncated or corrupt image ({exc})") from None
    return Frames(frames, indices, count)


def _checked(img: Image.Image, label: str) -> Image.Image:
    if img.width < 2 or img.height < 2:
        raise ImageError(f"{label}: image is {img.width}x{img.height}, too small to classify")
    return to_rgb(img)


def is_svg(data: bytes) -> bool:
    """Whether the bytes are an SVG document (by content: uploads carry no trustworthy name)."""
    return _SVG_START.match(data[:4096]) is not None


def render_svg(data: bytes, label: str = "<bytes>", side: int = SVG_SIDE) -> Image.Image:
    """SVG markup rasterised by resvg to fit side x side, aspect kept, RGBA.

    Text is drawn without the system's fonts (none are loaded: the same pixels on every machine,
    and no font scan per call); stickers carry their faces as shapes."""
    for _, href in _HREF.findall(data):
        target = href.strip()
        if not (target.startswith(b"#") or target.startswith(b"data:")):
            shown = target[:60].decode("utf-8", "replace")
            raise ImageError(
                f"{label}: SVG references an outside resource ({shown!r}); only #fragments and "
                "embedded data: URIs are rendered"
            )
    try:
        import resvg_py
    except ImportError:  # a dependency of kcdp; only a broken install lacks it
        raise ImageError(f"{label}: SVG needs the resvg renderer: pip install resvg-py") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImageError(f"{label}: SVG is not UTF-8 text") from None
    try:
        png = resvg_py.svg_to_bytes(svg_string=text, width=side, height=side, skip_system_fonts=True)
    except (ValueError, RuntimeError) as exc:
        raise ImageError(f"{label}: SVG could not be rendered ({exc})") from None
    img = Image.open(io.BytesIO(bytes(png)))
    img.load()
    return img


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


def crop_box(img: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """The box (left, top, right, bottom, as fractions of the image's sides) of a PIL image."""
    w, h = img.size
    left, top, right, bottom = box
    return img.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))


def preprocess(
    img: Image.Image,
    size: int,
    resize_filter: str = RESIZE_FILTER,
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Square-pad on white, crop to `box` (left, top, right, bottom as fractions of the padded side;
    None: the whole image), resize to size x size, return float32 CHW in [0, 1]."""
    return _pixels(_square(img), size, resize_filter, box)


def preprocess_views(
    img: Image.Image,
    size: int,
    face_view: int = 0,
    resize_filter: str = RESIZE_FILTER,
    face_box: tuple[float, float, float, float] | None = FACE_BOX,
) -> tuple[np.ndarray, np.ndarray | None]:
    """What a model reads of an image: preprocess(img, size) and, when it has a face view, the face box
    at face_view px (else None; face_box is read only then), both from one square padding."""
    square = _square(img)
    face = _pixels(square, face_view, resize_filter, face_box) if face_view else None
    return _pixels(square, size, resize_filter, None), face


def _square(img: Image.Image) -> Image.Image:
    """The image centred on a white square."""
    if img.width == img.height:
        return img
    side = max(img.width, img.height)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


def _pixels(
    square: Image.Image, size: int, resize_filter: str, box: tuple[float, float, float, float] | None
) -> np.ndarray:
    if box is not None:
        square = crop_box(square, box)
    if square.size != (size, size):
        square = square.resize((size, size), _FILTERS[resize_filter])
    arr = np.asarray(square, dtype=np.float32) / 255.0
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_pixels(source: str | Path | bytes, size: int, name: str | None = None) -> np.ndarray:
    """load_image + preprocess: float32 [3, size, size] in [0, 1]."""
    return preprocess(load_image(source, name=name), size)
