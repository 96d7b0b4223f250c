"""Small fixture npm tarballs for the emoji builder tests (no network)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

from kcdp_core.data.emoji_key import KeyEmoji
from kcdp_core.data.emoji_sources import DomainSource
from kcdp_core.data.npm_cache import sri_of
from kcdp_core.data.packages import NpmPackage

# Three benchmark emojis (one per class used) and three other emojis for the corpus.
KEY = [
    KeyEmoji("1F600", "grinning", "GRINNING FACE", "happiness", None, ""),
    KeyEmoji("1F622", "cry", "CRYING FACE", "sadness", "sadness", ""),
    KeyEmoji("263A-FE0F", "relaxed", "WHITE SMILING FACE", "happiness", "contentment", ""),
    KeyEmoji("1F621", "rage", "POUTING FACE", "anger", "anger", ""),
]
EMOJIBASE = [
    {"label": "grinning face", "hexcode": "1F600", "tags": ["face", "grin"], "group": 0, "subgroup": 0},
    {"label": "crying face", "hexcode": "1F622", "tags": ["cry", "sad"], "group": 0, "subgroup": 1},
    {"label": "smiling face", "hexcode": "263A", "tags": ["relaxed"], "group": 0, "subgroup": 0},
    {"label": "enraged face", "hexcode": "1F621", "tags": ["angry"], "group": 0, "subgroup": 1},
    {"label": "winking face", "hexcode": "1F609", "tags": ["face", "wink"], "group": 0, "subgroup": 0},
    {"label": "dog face", "hexcode": "1F436", "tags": ["dog", "pet"], "group": 1, "subgroup": 2},
    {
        "label": "thumbs up",
        "hexcode": "1F44D",
        "tags": ["hand", "up"],
        "group": 1,
        "subgroup": 2,
        "skins": [{"label": "thumbs up: dark skin tone", "hexcode": "1F44D-1F3FF", "tone": 5}],
    },
]
MESSAGES = {
    "groups": [{"key": "smileys-emotion", "order": 0}, {"key": "animals-nature", "order": 1}],
    "subgroups": [
        {"key": "face-smiling", "order": 0},
        {"key": "face-concerned", "order": 1},
        {"key": "animal-mammal", "order": 2},
    ],
}
DATASOURCE = [
    {"name": "WHITE SMILING FACE", "unified": "263A-FE0F", "short_names": ["relaxed"]},
    {"name": "DOG FACE", "unified": "1F436", "short_names": ["dog"]},
]


def png_bytes(color: tuple[int, int, int], size: int = 40, box: int = 20) -> bytes:
    """A transparent canvas with an opaque coloured disc off-centre (so cropping is visible)."""
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((2, 2, 2 + box, 2 + box), fill=(*color, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><circle cx="20" cy="20" r="10" fill="#{c}"/></svg>'


def make_tgz(path: Path, files: dict[str, bytes | str]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    return path


def build_fixture_cache(
    cache: Path, *, broken: bool = False
) -> tuple[dict[str, NpmPackage], dict[str, DomainSource]]:
    """Write fixture tarballs into cache under npm's names; return matching package/source tables.

    broken=True adds a corrupt PNG (dog, rast) and a blank SVG (thumbs up, vec).
    """
    cache.mkdir(parents=True, exist_ok=True)
    contents: dict[str, tuple[dict[str, bytes | str], bool]] = {
        "emojibase-data": (
            {"package/en/data.json": json.dumps(EMOJIBASE), "package/en/messages.json": json.dumps(MESSAGES)},
            True,
        ),
        "emoji-datasource": ({"package/emoji.json": json.dumps(DATASOURCE)}, True),
        # Raster files named by code point; 1F621 missing (an old set), an _alt sub-folder ignored.
        "raster-open": (
            {
                "package/img/x/64/1f600.png": png_bytes((250, 200, 0)),
                "package/img/x/64/1f622.png": png_bytes((0, 100, 250)),
                "package/img/x/64/263a-fe0f.png": png_bytes((250, 150, 0)),
                "package/img/x/64/1f609.png": png_bytes((200, 0, 0)),
                "package/img/x/64/1f44d-1f3ff.png": png_bytes((90, 60, 20)),
                "package/img/x/64/_alt/1f600.png": png_bytes((0, 0, 0)),
                "package/img/x/64/e000.png": png_bytes((0, 0, 0)),  # private use: not in the catalog
                "package/README.md": "fixture",
            },
            True,
        ),
        "raster-closed": (
            {
                f"package/png/64/{c}.png": png_bytes((10, 200, 10))
                for c in ("1f600", "1f622", "263a", "1f621", "1f436")
            },
            False,
        ),
        "svg-open": (
            {
                f"package/color/svg/{c}.svg": SVG.format(c="3366cc")
                for c in ("1F600", "1F621", "1F436", "1F609")
            },
            True,
        ),
        "iconify-open": (
            {
                "package/icons.json": json.dumps(
                    {
                        "prefix": "fx",
                        "width": 32,
                        "height": 32,
                        "icons": {
                            "grinning-face": {"body": '<circle cx="8" cy="8" r="6" fill="currentColor"/>'},
                            "white-smiling-face": {
                                "body": '<rect x="2" y="2" width="10" height="20" fill="#f80"/>'
                            },
                            "dog": {"body": '<circle cx="16" cy="16" r="6" fill="#a52"/>'},
                            "thumbs-up": {"body": '<rect x="2" y="2" width="6" height="6" fill="#fc0"/>'},
                        },
                        "aliases": {"thumbs-up-dark": {"parent": "thumbs-up", "hFlip": True}},
                    }
                )
            },
            True,
        ),
    }
    if broken:
        contents["raster-open"][0]["package/img/x/64/1f436.png"] = b"\x89PNG junk"
        contents["svg-open"][0]["package/color/svg/1F44D.svg"] = (
            '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 8 8"/>'
        )
    packages: dict[str, NpmPackage] = {}
    for name, (files, open_licence) in contents.items():
        pkg = NpmPackage(name, "1.0.0", "", "fixture licence", open_licence)
        tgz = make_tgz(cache / pkg.tarball_name, files)
        packages[name] = NpmPackage(name, "1.0.0", sri_of(tgz), "fixture licence", open_licence)
    sources = {
        "rast": DomainSource("rast", "raster-open", "raster_files", "package/img/x/64/", "flat"),
        "closed": DomainSource("closed", "raster-closed", "raster_files", "package/png/64/", "glossy"),
        "vec": DomainSource("vec", "svg-open", "svg_files", "package/color/svg/", "line"),
        "icons": DomainSource("icons", "iconify-open", "iconify", "package/icons.json", "fluent"),
    }
    return packages, sources
