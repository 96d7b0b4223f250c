"""Turn one emoji drawing (PNG/WebP bytes or SVG text) into the benchmark's image format.

Every image is cropped to its drawing (bounding box of the opaque pixels), scaled so its longer
side fills the square, centred on white, RGB. SVG is rendered with resvg (pip-installable, no
system libraries) at twice the output size so the crop is taken from a sharp image.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

ALPHA_THRESHOLD = 8  # ignore near-transparent halo/shadow pixels when finding the drawing
# What render_to_file returns for a drawing with nothing opaque in it: upstream art that is blank
# when rendered (a skip, reported as such, not an error of the build).
EMPTY_DRAWING = "empty drawing (fully transparent)"


class RenderError(ValueError):
    """A drawing that cannot be rendered; the message names it."""


def render_svg(svg: str, px: int) -> Image.Image:
    """RGBA rendering of SVG markup at px x px (aspect kept by the SVG's own viewBox)."""
    import resvg_py  # imported lazily: only the builder needs it

    try:
        png = resvg_py.svg_to_bytes(svg_string=svg, width=px, height=px, skip_system_fonts=True)
    except (ValueError, RuntimeError) as e:
        raise RenderError(f"resvg could not render the SVG ({e})") from e
    return Image.open(io.BytesIO(bytes(png))).convert("RGBA")


def iconify_svg(body: str, width: float, height: float, left: float = 0, top: float = 0) -> str:
    """Wrap an Iconify icon body in a full SVG document; currentColor draws black."""
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'width="{width}" height="{height}" viewBox="{left} {top} {width} {height}" color="#000000">'
        f"{body}</svg>"
    )


def to_square(img: Image.Image, size: int) -> Image.Image:
    """Crop to the opaque drawing, fit the longer side to size, centre on white, RGB."""
    rgba = img.convert("RGBA")
    alpha = rgba.getchannel("A").point(lambda a: 255 if a > ALPHA_THRESHOLD else 0)
    box = alpha.getbbox()
    if box is None:
        raise RenderError(EMPTY_DRAWING)
    rgba = rgba.crop(box)
    w, h = rgba.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    rgba = rgba.resize((nw, nh), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(rgba, ((size - nw) // 2, (size - nh) // 2))
    return canvas.convert("RGB")


def render_to_file(kind: str, payload: bytes | str, out_path: str, size: int) -> str | None:
    """Render one drawing to out_path; returns None on success, else the error text (batch goes on)."""
    try:
        if kind == "svg":
            img = render_svg(
                payload if isinstance(payload, str) else payload.decode("utf-8"), max(128, 2 * size)
            )
        elif kind == "raster":
            img = Image.open(io.BytesIO(payload if isinstance(payload, bytes) else payload.encode()))
            img.load()
        else:
            raise RenderError(f"unknown drawing kind {kind!r}")
        out = to_square(img, size)
        path = Path(out_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        out.save(tmp, format="PNG")
        tmp.replace(path)  # a killed build never leaves a truncated PNG under the final name
        return None
    except RenderError as e:
        return str(e) if str(e) == EMPTY_DRAWING else f"RenderError: {e}"
    except Exception as e:  # noqa: BLE001 - one bad drawing must not stop the batch; reported by caller
        return f"{type(e).__name__}: {e}"


def render_job(job: tuple[str, bytes | str, str, int]) -> tuple[str, str | None]:
    """Pool entry point: (kind, payload, out_path, size) -> (out_path, error or None)."""
    kind, payload, out_path, size = job
    return out_path, render_to_file(kind, payload, out_path, size)
