"""Good and bad image files for the runtime tests, written with PIL in a few milliseconds."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED, BLUE, YELLOW = (230, 20, 20), (20, 20, 230), (240, 220, 10)


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def blues(n: int) -> list[tuple[int, int, int]]:
    """n blues, each a step apart: GIF and WebP writers merge identical consecutive frames."""
    return [(BLUE[0], BLUE[1], BLUE[2] - 4 * i) for i in range(n)]


def animation(colours: list[tuple[int, int, int]], size: int = 32) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), c) for c in colours]


def gif_bytes(frames: list[Image.Image]) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    return buf.getvalue()


def svg_bytes(colour: tuple[int, int, int], width: int = 40, height: int = 30, extra: str = "") -> bytes:
    """An SVG sticker: a filled rectangle on a transparent canvas (white once composited)."""
    r, g, b = colour
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="rgb({r},{g},{b})"/>{extra}</svg>'
    ).encode()


def _noise(size=(48, 40), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (900 M): the loader must refuse it."""
    data = bytearray(png_bytes(Image.new("L", (8, 8), 255)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def write_bad(folder: Path) -> dict[str, Path]:
    """Inputs that must each get an error entry: name -> path (one of them does not exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "zero_byte": (folder / "zero.png", b""),
        "truncated_png": (folder / "trunc.png", png_bytes(_noise())[:300]),
        "truncated_jpeg": (folder / "trunc.jpg", jpeg_bytes(_noise())[:600]),
        "not_an_image": (folder / "notes.png", b"this is a text file, not a picture\n" * 20),
        "one_pixel": (folder / "one.png", png_bytes(Image.new("RGB", (1, 1), RED))),
        "bomb": (folder / "bomb.png", _bomb_png()),
    }
    out = {}
    for name, (path, data) in files.items():
        path.write_bytes(data)
        out[name] = path
    out["missing"] = folder / "does_not_exist.png"
    return out


def write_tricky(folder: Path) -> dict[str, tuple[Path, str]]:
    """Inputs that must be handled correctly: name -> (path, expected label of the fake export)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, str]] = {}

    red = Image.new("RGB", (40, 30), RED)
    (folder / "red.png").write_bytes(png_bytes(red))
    out["plain_red"] = (folder / "red.png", "anger")

    # animated: one red frame, then three blue: the frames' mean scores sadness (the first frame alone, anger)
    frames = animation([RED, *blues(3)])
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["animated_gif"] = (folder / "anim.gif", "sadness")
    frames[0].save(folder / "anim.webp", save_all=True, append_images=frames[1:], duration=50, lossless=True)
    out["animated_webp"] = (folder / "anim.webp", "sadness")

    (folder / "red.svg").write_bytes(svg_bytes(RED))
    out["svg"] = (folder / "red.svg", "anger")

    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(folder / "cmyk.jpg", quality=95)
    out["cmyk_jpeg"] = (folder / "cmyk.jpg", "anger")

    # 16-bit grayscale: mid grey must stay mid grey (not be stretched or clipped)
    sixteen = Image.fromarray(np.full((32, 32), 32768, np.uint16))
    sixteen.save(folder / "gray16.png")
    out["sixteen_bit"] = (folder / "gray16.png", "")

    # palette with a transparent background and a blue square: white + blue -> sadness
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0, *BLUE] + [0] * (256 * 3 - 6))
    pal.paste(1, (8, 8, 24, 24))
    pal.save(folder / "palette.png", transparency=0)
    out["palette_transparency"] = (folder / "palette.png", "sadness")

    # EXIF orientation 6 (rotate 90): stored 40x20, shown 20x40
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), BLUE).save(folder / "rotated.jpg", exif=exif.tobytes(), quality=95)
    out["exif_rotation"] = (folder / "rotated.jpg", "sadness")
    return out
