"""The style domains: which package holds each, where its drawings are, and how to read them.

Three layouts occur: one raster file per emoji named by code point (emoji-datasource-*,
JoyPixels/EmojiOne assets, Fluent 3D WebP), one SVG file per emoji named by code point (OpenMoji),
and an Iconify JSON collection whose icons are SVG bodies named by CLDR-like names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kcdp_core.data.emoji_catalog import EmojiCatalog, is_hex_sequence, norm_hex
from kcdp_core.data.emoji_render import iconify_svg
from kcdp_core.data.tarball import iter_files


@dataclass(frozen=True)
class DomainSource:
    domain: str
    package: str
    layout: str  # "raster_files" | "svg_files" | "iconify"
    where: str  # folder prefix inside the tarball, or the Iconify JSON file
    family: str  # style family of the benchmark: glossy, flat, line or fluent


DOMAINS: dict[str, DomainSource] = {
    d.domain: d
    for d in (
        DomainSource("apple", "emoji-datasource-apple", "raster_files", "package/img/apple/64/", "glossy"),
        DomainSource("google", "emoji-datasource-google", "raster_files", "package/img/google/64/", "glossy"),
        DomainSource(
            "twitter", "emoji-datasource-twitter", "raster_files", "package/img/twitter/64/", "flat"
        ),
        DomainSource(
            "facebook", "emoji-datasource-facebook", "raster_files", "package/img/facebook/64/", "glossy"
        ),
        DomainSource("joypixels", "emoji-assets", "raster_files", "package/png/64/", "glossy"),
        DomainSource("emojione4", "emojione-assets", "raster_files", "package/png/128/", "glossy"),
        DomainSource("fluent3d", "@lobehub/fluent-emoji-3d", "raster_files", "package/assets/", "fluent"),
        DomainSource("openmoji", "openmoji", "svg_files", "package/color/svg/", "flat"),
        DomainSource("openmoji_black", "openmoji", "svg_files", "package/black/svg/", "line"),
        DomainSource("fluent_color", "@iconify-json/fluent-emoji", "iconify", "package/icons.json", "fluent"),
        DomainSource(
            "fluent_flat", "@iconify-json/fluent-emoji-flat", "iconify", "package/icons.json", "fluent"
        ),
        DomainSource(
            "fluent_mono", "@iconify-json/fluent-emoji-high-contrast", "iconify", "package/icons.json", "line"
        ),
        DomainSource("noto_v1", "@iconify-json/noto-v1", "iconify", "package/icons.json", "flat"),
        DomainSource("emojione_v1", "@iconify-json/emojione-v1", "iconify", "package/icons.json", "flat"),
        DomainSource(
            "emojione_mono", "@iconify-json/emojione-monotone", "iconify", "package/icons.json", "line"
        ),
    )
}

FAMILIES: tuple[str, ...] = ("glossy", "flat", "line", "fluent")


@dataclass(frozen=True)
class Drawing:
    key: str  # normalised code point
    member: str  # provenance: file inside the tarball (Iconify: "icons.json#<name>")
    kind: str  # "raster" | "svg"
    payload: bytes | str


def _file_stem(name: str, prefix: str) -> str | None:
    """The code-point stem of a file directly inside prefix, else None (sub-folders such as _alt)."""
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    if "/" in rest:
        return None
    stem = PurePosixPath(rest).stem
    return stem if is_hex_sequence(stem) else None


def _iconify_icons(data: dict) -> dict[str, tuple[str, float, float, float, float]]:
    """name -> (svg body, width, height, left, top) for icons and aliases (flips/rotations applied)."""
    dw, dh = float(data.get("width", 16)), float(data.get("height", 16))
    icons: dict[str, dict] = {}
    for name, icon in data.get("icons", {}).items():
        icons[name] = dict(icon)
    aliases = data.get("aliases", {}) or {}

    def resolve(name: str, depth: int = 0) -> dict | None:
        if name in icons:
            return icons[name]
        alias = aliases.get(name)
        if alias is None or depth > 8:
            return None
        parent = resolve(alias.get("parent", ""), depth + 1)
        if parent is None:
            return None
        merged = {**parent, **{k: v for k, v in alias.items() if k != "parent"}}
        # Transformations compose: two flips cancel, rotations add.
        for flip in ("hFlip", "vFlip"):
            merged[flip] = bool(parent.get(flip)) ^ bool(alias.get(flip))
        merged["rotate"] = (int(parent.get("rotate", 0)) + int(alias.get("rotate", 0))) % 4
        return merged

    out: dict[str, tuple[str, float, float, float, float]] = {}
    for name in [*icons, *aliases]:
        icon = resolve(name)
        if icon is None or "body" not in icon:
            continue
        w, h = float(icon.get("width", dw)), float(icon.get("height", dh))
        left, top = float(icon.get("left", 0)), float(icon.get("top", 0))
        body = icon["body"]
        cx, cy = left + w / 2, top + h / 2
        transforms = []
        if icon.get("hFlip"):
            transforms.append(f"translate({2 * cx} 0) scale(-1 1)")
        if icon.get("vFlip"):
            transforms.append(f"translate(0 {2 * cy}) scale(1 -1)")
        if icon.get("rotate"):
            transforms.append(f"rotate({90 * int(icon['rotate'])} {cx} {cy})")
        if transforms:
            body = f'<g transform="{" ".join(transforms)}">{body}</g>'
        out[name] = (body, w, h, left, top)
    return out


def read_drawings(
    source: DomainSource, tgz: Path, catalog: EmojiCatalog, want: Callable[[str], bool]
) -> dict[str, Drawing]:
    """Drawings of one domain by normalised code point, for the code points `want` accepts.

    A code point drawn by several files (fully and minimally qualified names) keeps the first.
    """
    found: dict[str, Drawing] = {}
    if source.layout in ("raster_files", "svg_files"):
        kind = "raster" if source.layout == "raster_files" else "svg"
        stems: dict[str, str] = {}
        seen: set[str] = set()

        def accept(name: str) -> bool:
            stem = _file_stem(name, source.where)
            if stem is None:
                return False
            key = norm_hex(stem)
            if key in seen or not want(key):
                return False
            seen.add(key)
            stems[name] = key
            return True

        for name, data in iter_files(tgz, accept):
            key = stems[name]
            payload: bytes | str = data if kind == "raster" else data.decode("utf-8")
            found.setdefault(key, Drawing(key, name, kind, payload))
    elif source.layout == "iconify":
        data = {}
        for _, raw in iter_files(tgz, lambda n: n == source.where):
            data = json.loads(raw)
        if not data:
            raise ValueError(f"{tgz}: has no Iconify collection {source.where}")
        for name, (body, w, h, left, top) in _iconify_icons(data).items():
            key = catalog.lookup_name(name)
            if key is None or key in found or not want(key):
                continue
            found[key] = Drawing(key, f"{source.where}#{name}", "svg", iconify_svg(body, w, h, left, top))
    else:
        raise ValueError(f"unknown layout {source.layout!r} for domain {source.domain}")
    return found
