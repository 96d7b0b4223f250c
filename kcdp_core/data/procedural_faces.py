"""Procedurally drawn faces: the expression comes from FACS-like geometry, everything else is random.

Each of the seven classes has a prototype of facial actions (Ekman and Friesen's FACS prototypes,
drawn as a cartoonist would): brow height and tilt, eye openness and lids, mouth curvature, opening
and shape, nose wrinkle. `sample_expression` draws one face's geometry around its class prototype;
`sample_appearance` draws everything that must not carry the class: head shape, palette, outline
and stroke width, fills, hair, ears, accessories that leave the face visible (clear glasses, hats,
earrings, blush, freckles), pose (scale, position, rotation, a turn of the head), background and the rendering (flat
colour, line art, edge drawing, grayscale, duotone). Pure numpy + PIL, deterministic by
(class, seed): `render_face("anger", 7)` is the same image on every machine.

A `Style` fixes most of that look for a set of faces, as a sticker or avatar set does: its number
draws one rendering, palette, head, eyes, brows, nose and outline, and its faces vary only in what an
avatar generator's seeds vary (skin and hair colour among the style's three, hair among its two,
accessories, pose). Styles are drawn targets with known labels that no model here has seen: a fresh
selection set for label-free adaptation (`--styles`).

Coordinates are in face units: the head is centred at (0, 0) with half-width 1, y points down.

    kcdp-data procedural --out DIR --per-class N [--size 128] [--seed-start S] [--contact-sheet PNG]
                         [--styles K [--style-start S]]

writes DIR/<label>/<n>.png, DIR/index.csv (path, label, seed and the geometry of every face) and
DIR/report.json; with --styles, one such folder per style, DIR/domains/procedural-<number>/.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from kcdp_core.portable.labels import EMOJI7

SUPERSAMPLE = 3  # drawn at 3x and downsampled: smooth edges without an anti-aliasing rasteriser


@dataclass(frozen=True)
class Expression:
    """The geometry that carries the class (face units; 0 is neutral unless noted)."""

    brow_raise: float  # + raises both brows (surprise, fear), - lowers them (anger, disgust)
    brow_tilt: float  # + inner ends up (sadness, fear), - inner ends down (anger)
    eye_open: float  # eye height relative to a relaxed eye (1)
    upper_lid: float  # 0..1 of the eye hidden by the upper lid (anger glare, sad droop)
    lid_slant: float  # + lid lower at the outer corner (sadness), - lower at the inner corner (anger)
    lower_lid: float  # 0..1 of the eye hidden from below by raised cheeks (happiness, disgust)
    eye_smile: float  # > 0.5: eyes drawn closed as upward arcs (a laughing face)
    mouth_curve: float  # + corners up (smile), - corners down
    mouth_open: float  # 0 closed .. 1 wide open
    mouth_width: float  # full mouth width as a fraction of the head width
    mouth_round: float  # > 0.5: an O-shaped mouth (surprise)
    teeth: float  # > 0.5: teeth show in an open mouth
    sneer: float  # 0..1 one side of the upper lip raised (disgust)
    sneer_side: float  # -1 left, +1 right
    nose_wrinkle: float  # 0..1 wrinkle lines beside the nose (disgust)
    tongue: float  # > 0.5: tongue out (disgust)
    symbol: str  # "" or a drawn cue: "tear" (sadness), "sweat" (fear), "vein" (anger)


# Class prototypes: (low, high) per parameter, sampled uniformly; omitted parameters are 0.
# Discrete choices (closed smiling eyes, open mouth, teeth, tongue, symbols) are drawn in
# sample_expression with the probabilities there.
PROTOTYPES: dict[str, dict[str, tuple[float, float]]] = {
    "neutral": {
        "brow_raise": (-0.02, 0.03),
        "brow_tilt": (-0.04, 0.04),
        "eye_open": (0.9, 1.1),
        "upper_lid": (0.0, 0.15),
        "mouth_curve": (-0.08, 0.08),
        "mouth_width": (0.3, 0.45),
    },
    "happiness": {  # AU6 + AU12 (+ AU25/26): cheeks raised, lip corners pulled up
        "brow_raise": (0.0, 0.06),
        "brow_tilt": (0.0, 0.1),
        "eye_open": (0.8, 1.0),
        "lower_lid": (0.2, 0.4),
        "mouth_curve": (0.55, 1.0),
        "mouth_width": (0.4, 0.6),
    },
    "sadness": {  # AU1 + AU4 + AU15: inner brows up, lids droop, lip corners down
        "brow_raise": (0.0, 0.06),
        "brow_tilt": (0.25, 0.45),
        "eye_open": (0.65, 0.9),
        "upper_lid": (0.25, 0.45),
        "lid_slant": (0.25, 0.5),
        "mouth_curve": (-0.95, -0.5),
        "mouth_width": (0.3, 0.45),
    },
    "surprise": {  # AU1 + AU2 + AU5 + AU26: brows high, eyes wide, jaw dropped
        "brow_raise": (0.16, 0.28),
        "brow_tilt": (0.0, 0.08),
        "eye_open": (1.35, 1.7),
        "mouth_curve": (-0.1, 0.1),
        "mouth_open": (0.6, 1.0),
        "mouth_width": (0.2, 0.3),
        "mouth_round": (0.75, 1.0),
    },
    "fear": {  # AU1 + AU2 + AU4 + AU5 + AU20 + AU26: brows up and together, eyes wide, lips stretched
        "brow_raise": (0.1, 0.2),
        "brow_tilt": (0.25, 0.42),
        "eye_open": (1.3, 1.6),
        "mouth_curve": (-0.45, -0.15),
        "mouth_open": (0.35, 0.65),
        "mouth_width": (0.5, 0.68),
    },
    "anger": {  # AU4 + AU5 + AU7 + AU23/24: brows down and together, glaring lids, lips pressed
        "brow_raise": (-0.14, -0.07),
        "brow_tilt": (-0.48, -0.28),
        "eye_open": (0.75, 1.0),
        "upper_lid": (0.25, 0.45),
        "lid_slant": (-0.55, -0.25),
        "lower_lid": (0.0, 0.15),
        "mouth_curve": (-0.5, -0.2),
        "mouth_width": (0.38, 0.55),
    },
    "disgust": {  # AU9 + AU10 + AU15: nose wrinkled, upper lip raised on one side, corners down
        "brow_raise": (-0.1, -0.04),
        "brow_tilt": (-0.2, -0.08),
        "eye_open": (0.6, 0.85),
        "upper_lid": (0.15, 0.3),
        "lower_lid": (0.25, 0.45),
        "mouth_curve": (-0.7, -0.3),
        "mouth_width": (0.35, 0.5),
        "sneer": (0.55, 1.0),
        "nose_wrinkle": (0.6, 1.0),
    },
}

GEOMETRY = tuple(f.name for f in fields(Expression) if f.name != "symbol")


def sample_expression(label: str, rng: np.random.Generator) -> Expression:
    """One face's expression geometry around the prototype of `label`."""
    if label not in PROTOTYPES:
        raise ValueError(f"unknown class {label!r}: expected one of {EMOJI7}")
    values = {name: float(rng.uniform(*PROTOTYPES[label].get(name, (0.0, 0.0)))) for name in GEOMETRY}
    values["sneer_side"] = float(rng.choice([-1.0, 1.0]))
    symbol = ""
    if label == "happiness":
        values["eye_smile"] = float(rng.random() < 0.4)
        values["mouth_open"] = float(rng.uniform(0.35, 0.8)) if rng.random() < 0.55 else 0.0
        values["teeth"] = float(rng.random() < 0.6)
    elif label == "sadness":
        values["mouth_open"] = float(rng.uniform(0.15, 0.35)) if rng.random() < 0.25 else 0.0
        symbol = "tear" if rng.random() < 0.3 else ""
    elif label == "fear":
        values["teeth"] = float(rng.random() < 0.6)
        symbol = "sweat" if rng.random() < 0.3 else ""
    elif label == "anger":
        clenched = rng.random() < 0.45  # bared, clenched teeth; otherwise lips pressed together
        values["mouth_open"] = float(rng.uniform(0.3, 0.5)) if clenched else 0.0
        values["teeth"] = float(clenched)
        symbol = "vein" if rng.random() < 0.2 else ""
    elif label == "disgust":
        tongue = rng.random() < 0.3
        values["mouth_open"] = float(rng.uniform(0.2, 0.4)) if tongue else 0.0
        values["tongue"] = float(tongue)
    return Expression(**values, symbol=symbol)


# ---------------------------------------------------------------------------------------------
# Appearance: everything that must not carry the class.

SKIN = [(255, 224, 196), (241, 194, 150), (224, 172, 125), (198, 134, 90), (160, 105, 70), (125, 82, 56)]
FANTASY = [
    (166, 218, 149),
    (150, 200, 240),
    (200, 170, 235),
    (255, 230, 120),
    (250, 180, 200),
    (190, 190, 190),
]
HAIR = [(30, 25, 25), (80, 50, 30), (150, 95, 50), (230, 190, 100), (200, 70, 40), (235, 235, 235)]
BRIGHT = [(230, 60, 60), (60, 140, 230), (60, 180, 90), (250, 160, 40), (150, 80, 200), (240, 100, 170)]
LIGHT = [(255, 250, 235), (235, 245, 255), (255, 235, 240), (240, 255, 235), (255, 255, 255)]
RENDERINGS = ("flat", "flat", "flat", "lineart", "lineart", "edges", "gray", "duotone")
HAIR_STYLES = ("none", "cap", "fringe", "spikes", "long", "bun")


@dataclass(frozen=True)
class Appearance:
    rendering: str
    background: str  # flat | gradient | stripes | dots
    bg: tuple[int, int, int]
    bg2: tuple[int, int, int]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    ink: tuple[int, int, int]  # features and outline
    outline: float  # outline width (face units); 0: no outline
    stroke: float  # width of the feature strokes (brows, closed mouths, lids)
    head_aspect: float  # half-height / half-width
    head_squareness: float  # superellipse exponent: 2 an ellipse, larger a rounded square
    chin_taper: float
    ears: bool
    hair_style: str  # none | cap | fringe | spikes | long | bun
    hat: bool
    glasses: bool
    earrings: bool
    blush: bool
    freckles: bool
    eye_style: str  # dot | white | ring
    eye_size: float
    eye_spacing: float
    eye_y: float
    brow_width: float
    brow_gap: float
    brow_block: bool  # a filled block instead of a stroke
    nose_style: str  # none | dot | hook | triangle | nostrils
    mouth_y: float
    scale: float  # head half-width as a fraction of the image side
    dx: float
    dy: float
    rotation: float  # degrees, in the image plane
    yaw: float  # radians: the head turned left or right, features shifted over a sphere
    duotone: tuple[tuple[int, int, int], tuple[int, int, int]] = field(default=((0, 0, 0), (255, 255, 255)))


def _pick(rng: np.random.Generator, items: list) -> tuple:
    return tuple(items[int(rng.integers(len(items)))])


def _jitter(rng: np.random.Generator, colour: tuple, amount: int = 18) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def sample_appearance(rng: np.random.Generator) -> Appearance:
    rendering = str(rng.choice(RENDERINGS))
    skin = _jitter(rng, _pick(rng, FANTASY if rng.random() < 0.35 else SKIN))
    light_bg = rng.random() < 0.8
    bg = tuple(int(v) for v in (rng.integers(170, 256, 3) if light_bg else rng.integers(20, 90, 3)))
    bg2 = _jitter(rng, bg, 40)
    ink = (20, 20, 25) if rng.random() < 0.75 else tuple(int(c * 0.35) for c in skin)
    return Appearance(
        rendering=rendering,
        background=str(rng.choice(["flat", "flat", "gradient", "stripes", "dots"])),
        bg=bg,
        bg2=bg2,
        skin=skin,
        hair=_jitter(rng, _pick(rng, HAIR + BRIGHT[:2])),
        ink=ink,
        outline=float(rng.choice([0.0, rng.uniform(0.015, 0.06)], p=[0.25, 0.75])),
        stroke=float(rng.uniform(0.045, 0.09)),
        head_aspect=float(rng.uniform(1.0, 1.3)),
        head_squareness=float(rng.uniform(2.0, 4.5)),
        chin_taper=float(rng.uniform(0.0, 0.35)),
        ears=bool(rng.random() < 0.5),
        hair_style=str(rng.choice(HAIR_STYLES)),
        hat=bool(rng.random() < 0.15),
        glasses=bool(rng.random() < 0.15),
        earrings=bool(rng.random() < 0.15),
        blush=bool(rng.random() < 0.3),
        freckles=bool(rng.random() < 0.15),
        eye_style=str(rng.choice(["dot", "white", "white", "ring"])),
        eye_size=float(rng.uniform(0.1, 0.16)),
        eye_spacing=float(rng.uniform(0.3, 0.42)),
        eye_y=float(rng.uniform(-0.2, -0.05)),
        brow_width=float(rng.uniform(0.2, 0.32)),
        brow_gap=float(rng.uniform(0.08, 0.16)),
        brow_block=bool(rng.random() < 0.25),
        nose_style=str(rng.choice(["none", "dot", "hook", "triangle", "nostrils"])),
        mouth_y=float(rng.uniform(0.42, 0.58)),
        scale=float(rng.uniform(0.27, 0.38)),
        dx=float(rng.uniform(-0.07, 0.07)),
        dy=float(rng.uniform(-0.05, 0.08)),
        rotation=float(rng.uniform(-18, 18)),
        yaw=float(rng.uniform(-0.35, 0.35)),
        duotone=(_pick(rng, [(20, 30, 80), (60, 20, 40), (10, 60, 50), (0, 0, 0)]), _pick(rng, LIGHT)),
    )


@dataclass(frozen=True)
class Style:
    """A drawn style: the look its faces share, and the few choices that vary between them."""

    number: int
    look: Appearance  # rendering, background, ink, outline, head, eyes, brows, nose, mouth place
    skins: tuple[tuple[int, int, int], ...]
    hairs: tuple[tuple[int, int, int], ...]
    hair_styles: tuple[str, ...]
    accessories: float  # chance of each accessory (hat, glasses, earrings) on a face


def sample_style(number: int) -> Style:
    """Style `number`, the same on every machine (its own generator, apart from every face's)."""
    rng = np.random.default_rng([int(number), 0x7374796C])
    fantasy = rng.random() < 0.35
    return Style(
        number=int(number),
        look=sample_appearance(rng),
        skins=tuple(_jitter(rng, _pick(rng, FANTASY if fantasy else SKIN)) for _ in range(3)),
        hairs=tuple(_jitter(rng, _pick(rng, HAIR + BRIGHT[:2])) for _ in range(3)),
        hair_styles=tuple(str(h) for h in rng.choice(HAIR_STYLES, 2, replace=False)),
        accessories=float(rng.choice([0.0, 0.15, 0.3])),
    )


def appearance_in_style(style: Style, rng: np.random.Generator) -> Appearance:
    """One face's look in `style`: what an avatar generator's seeds change, the rest the style's. The pose
    varies less than across styles (a style draws its heads alike)."""
    base = style.look
    return replace(
        base,
        bg=_jitter(rng, base.bg, 12),
        skin=style.skins[int(rng.integers(len(style.skins)))],
        hair=style.hairs[int(rng.integers(len(style.hairs)))],
        hair_style=style.hair_styles[int(rng.integers(len(style.hair_styles)))],
        hat=bool(rng.random() < style.accessories),
        glasses=bool(rng.random() < style.accessories),
        earrings=bool(rng.random() < style.accessories),
        scale=base.scale * float(rng.uniform(0.95, 1.05)),
        dx=base.dx + float(rng.uniform(-0.02, 0.02)),
        dy=base.dy + float(rng.uniform(-0.02, 0.02)),
        rotation=float(rng.uniform(-6, 6)),
        yaw=float(rng.uniform(-0.15, 0.15)),
    )


# ---------------------------------------------------------------------------------------------
# Drawing


class _Canvas:
    """A PIL drawing in face units: turn, scale, rotation and position of the head applied to every point."""

    def __init__(self, size: int, look: Appearance):
        self.px = size * SUPERSAMPLE
        self.image = Image.new("RGB", (self.px, self.px), look.bg)
        self.draw = ImageDraw.Draw(self.image)
        self.s = look.scale * self.px
        self.cx = self.px * (0.5 + look.dx)
        self.cy = self.px * (0.5 + look.dy)
        a = math.radians(look.rotation)
        self.cos, self.sin = math.cos(a), math.sin(a)
        self.yaw, self.aspect = look.yaw, look.head_aspect

    def pts(self, xy: np.ndarray) -> list[tuple[float, float]]:
        x, y = xy[:, 0], xy[:, 1]
        # A turned head: points on the face lie on an ellipsoid, so they move by their depth; the
        # outline (depth 0) stays, features near the centre move most.
        z = np.sqrt(np.clip(1 - x**2 - (y / self.aspect) ** 2, 0, 1))
        x = x * math.cos(self.yaw) + z * math.sin(self.yaw)
        u = self.cx + self.s * (x * self.cos - y * self.sin)
        v = self.cy + self.s * (x * self.sin + y * self.cos)
        return list(zip(u.tolist(), v.tolist(), strict=True))

    def width(self, w: float) -> int:
        return max(1, round(w * self.s))

    def polygon(self, xy: np.ndarray, fill, outline=None, width: float = 0.0) -> None:
        self.draw.polygon(self.pts(xy), fill=fill)
        if outline is not None and width > 0:
            self.line(np.vstack([xy, xy[:1]]), outline, width)

    def line(self, xy: np.ndarray, colour, width: float) -> None:
        p, w = self.pts(xy), self.width(width)
        self.draw.line(p, fill=colour, width=w, joint="curve")
        r = w / 2  # round caps
        for u, v in (p[0], p[-1]):
            self.draw.ellipse((u - r, v - r, u + r, v + r), fill=colour)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _bezier(p0, p1, p2, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(p, float) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _head(look: Appearance) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    e = 2.0 / look.head_squareness
    x = np.sign(np.cos(t)) * np.abs(np.cos(t)) ** e
    y = look.head_aspect * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** e
    x = x * (1 - look.chin_taper * np.clip(y / look.head_aspect, 0, 1) ** 2)
    return np.stack([x, y], 1)


def _palette(look: Appearance) -> dict[str, tuple]:
    """Fill colours; line art keeps the strokes and empties the fills."""
    if look.rendering == "lineart":  # dark lines on light paper
        paper = look.bg if sum(look.bg) > 450 else (255, 255, 255)
        return {
            "skin": paper,
            "hair": look.ink if look.hair_style in ("cap", "bun") else paper,
            "ink": look.ink,
            "mouth": paper,
            "white": paper,
            "blush": paper,
            "outline": max(look.outline, 0.025),
        }
    return {
        "skin": look.skin,
        "hair": look.hair,
        "ink": look.ink,
        "mouth": (110, 30, 40),
        "white": (255, 255, 255),
        "blush": (245, 150, 150),
        "outline": look.outline,
    }


def _background(c: _Canvas, look: Appearance) -> None:
    n = c.px
    if look.background == "gradient":
        t = np.linspace(0, 1, n)[:, None, None]
        grad = (1 - t) * np.array(look.bg) + t * np.array(look.bg2)
        c.image.paste(Image.fromarray(np.repeat(grad, n, 1).astype(np.uint8)))
    elif look.background == "stripes":
        step = n // 8
        for x in range(-n, n, step):
            c.draw.polygon([(x, 0), (x + step // 2, 0), (x + step // 2 + n, n), (x + n, n)], fill=look.bg2)
    elif look.background == "dots":
        step = n // 7
        for u in range(step // 2, n, step):
            for v in range(step // 2, n, step):
                c.draw.ellipse((u - step // 6, v - step // 6, u + step // 6, v + step // 6), fill=look.bg2)


def _hair(c: _Canvas, look: Appearance, col: dict, behind: bool) -> None:
    a = look.head_aspect
    ol = (col["ink"], col["outline"]) if col["outline"] else (None, 0.0)
    if behind:
        if look.hair_style == "long":
            c.polygon(_ellipse(0, 0.15 * a, 1.2, 1.05 * a), col["hair"], *ol)
        if look.hair_style == "bun":
            c.polygon(_ellipse(0, -1.05 * a, 0.4, 0.3), col["hair"], *ol)
        return
    head = _head(look)
    top = head[head[:, 1] < -0.86 * a]  # the hair never reaches the brows
    if look.hair_style in ("cap", "long", "bun"):
        c.polygon(np.vstack([top, [[0.9, -0.8 * a], [-0.9, -0.8 * a]]]), col["hair"], *ol)
    elif look.hair_style == "fringe":
        xs = np.linspace(0.95, -0.95, 9)
        teeth = np.stack([xs, -0.78 * a + 0.06 * (np.arange(9) % 2)], 1)
        c.polygon(np.vstack([_ellipse(0, -0.95 * a, 1.02, 0.3 * a)[24:], teeth]), col["hair"], *ol)
    elif look.hair_style == "spikes":
        xs = np.linspace(-0.8, 0.8, 7)
        for i, x in enumerate(xs):
            h = 0.35 + 0.15 * (i % 2)
            y0 = -a * math.sqrt(max(0.0, 1 - (x / 1.05) ** 2)) - 0.05
            c.polygon(np.array([[x - 0.16, y0 + 0.12], [x, y0 - h], [x + 0.16, y0 + 0.12]]), col["hair"], *ol)
    if look.hat:
        c.polygon(
            np.array([[-0.7, -0.95 * a], [0.7, -0.95 * a], [0.55, -1.45 * a], [-0.55, -1.45 * a]]),
            look.hair[::-1],
            *ol,
        )
        c.polygon(
            np.array([[-1.1, -0.9 * a], [1.1, -0.9 * a], [1.1, -1.0 * a], [-1.1, -1.0 * a]]),
            look.hair[::-1],
            *ol,
        )


def _eye(c: _Canvas, look: Appearance, col: dict, e: Expression, side: int) -> None:
    x0, y0 = side * look.eye_spacing, look.eye_y
    r = look.eye_size
    if e.eye_smile > 0.5:  # a laughing eye: an upward arc
        c.line(
            _bezier((x0 - r, y0 + 0.3 * r), (x0, y0 - 1.3 * r), (x0 + r, y0 + 0.3 * r)),
            col["ink"],
            look.stroke,
        )
        return
    rx, ry = (
        r * (1.05 if look.eye_style != "dot" else 0.75),
        r * e.eye_open * (1.0 if look.eye_style != "dot" else 0.9),
    )
    if look.eye_style == "dot":
        c.polygon(_ellipse(x0, y0, rx, ry), col["ink"])
    else:
        c.polygon(_ellipse(x0, y0, rx, ry), col["white"], col["ink"], 0.025)
        pr = min(rx, ry) * (0.55 if look.eye_style == "white" else 0.35)
        c.polygon(_ellipse(x0, y0 + 0.1 * ry, pr, pr), col["ink"])
    # Lids: the skin covers the top (glare, droop) or the bottom (raised cheeks) of the eye.
    inner, outer = x0 - side * rx * 1.3, x0 + side * rx * 1.3
    if e.upper_lid > 0.05:
        drop = 2 * ry * e.upper_lid
        y_in = y0 - ry + drop - e.lid_slant * ry * 0.8
        y_out = y0 - ry + drop + e.lid_slant * ry * 0.8
        top = y0 - ry * 1.6
        c.polygon(np.array([[inner, top], [outer, top], [outer, y_out], [inner, y_in]]), col["skin"])
        c.line(
            np.array([[inner + side * 0.2 * rx, y_in], [outer - side * 0.2 * rx, y_out]]),
            col["ink"],
            look.stroke * 0.8,
        )
    if e.lower_lid > 0.05:
        y_l = y0 + ry - 2 * ry * e.lower_lid
        arc = _bezier((inner, y_l + 0.3 * ry), (x0, y_l - 0.6 * ry), (outer, y_l + 0.3 * ry))
        c.polygon(np.vstack([arc, [[outer, y0 + 1.6 * ry], [inner, y0 + 1.6 * ry]]]), col["skin"])
        c.line(arc[3:-3], col["ink"], look.stroke * 0.6)


def _brow(c: _Canvas, look: Appearance, col: dict, e: Expression, side: int) -> None:
    base = look.eye_y - look.eye_size * 1.25 - 0.12 - e.brow_raise
    x_in = (
        side * look.brow_gap * (0.8 if e.brow_tilt > 0.2 and e.brow_raise > 0.08 else 1.0)
    )  # fear: drawn together
    x_out = side * (look.brow_gap + look.brow_width)
    y_in = base - e.brow_tilt * 0.22
    y_out = base + e.brow_tilt * 0.05
    arch = 0.04 + max(0.0, e.brow_raise) * 0.25
    curve = _bezier((x_in, y_in), ((x_in + x_out) / 2, (y_in + y_out) / 2 - arch), (x_out, y_out), 12)
    if look.brow_block:
        c.polygon(np.vstack([curve, curve[::-1] + [0, look.stroke * 1.4]]), col["ink"])
    else:
        c.line(curve, col["ink"], look.stroke * 1.3)


def _mouth(c: _Canvas, look: Appearance, col: dict, e: Expression) -> None:
    y0, hw = look.mouth_y, e.mouth_width  # half-width in face units = fraction of the head width
    if e.mouth_round > 0.5:  # an O
        rx, ry = hw * 0.55, 0.08 + 0.17 * e.mouth_open
        c.polygon(_ellipse(0, y0 + ry * 0.5, rx, ry), col["mouth"], col["ink"], look.stroke * 0.7)
        return
    lift = 0.13 * e.mouth_curve

    top = _bezier((-hw, y0 - lift), (0, y0 + lift), (hw, y0 - lift))
    # AU10 on one side (disgust): that half of the upper lip is pulled up
    top[:, 1] -= e.sneer * 0.14 * np.clip(e.sneer_side * top[:, 0] / hw, 0, 1) ** 0.7
    if e.mouth_open < 0.05:
        c.line(top, col["ink"], look.stroke)
        return
    depth = 0.1 + 0.3 * e.mouth_open
    bottom = _bezier(
        (hw, y0 - lift), (0, y0 + lift + depth * 2 if lift > 0 else y0 + depth * 1.6), (-hw, y0 - lift)
    )
    if e.mouth_curve < -0.1:  # a downturned open mouth: the lower lip follows the corners
        bottom = _bezier((hw, y0 - lift), (0, y0 + depth), (-hw, y0 - lift))
        top = _bezier((-hw, y0 - lift), (0, y0 - depth * 0.4 + lift), (hw, y0 - lift))
    shape = np.vstack([top, bottom])
    c.polygon(shape, col["mouth"])
    if e.teeth > 0.5:
        band = min(0.07, depth * 0.45)
        c.polygon(np.vstack([top, top[::-1] + [0, band]]), col["white"])
        if e.mouth_curve < 0 or e.mouth_open < 0.55:  # clenched or stretched: both rows and the gaps
            low = bottom[::-1]
            c.polygon(np.vstack([low - [0, band], low[::-1]]), col["white"])
            for x in np.linspace(-hw * 0.6, hw * 0.6, 5):
                i = int(np.argmin(np.abs(top[:, 0] - x)))
                j = int(np.argmin(np.abs(low[:, 0] - x)))
                c.line(np.array([top[i], low[j]]), col["ink"], look.stroke * 0.35)
    if e.tongue > 0.5:
        c.polygon(
            _ellipse(-e.sneer_side * hw * 0.25, y0 + depth + 0.05, 0.1, 0.12),
            (235, 110, 130),
            col["ink"],
            look.stroke * 0.5,
        )
    c.polygon(shape, None, col["ink"], look.stroke * 0.8)


def _nose(c: _Canvas, look: Appearance, col: dict, e: Expression) -> None:
    y = (look.eye_y + look.mouth_y) / 2 + 0.04
    ink, w = col["ink"], look.stroke * 0.7
    if look.nose_style == "dot":
        c.polygon(_ellipse(0, y, 0.05, 0.04), ink)
    elif look.nose_style == "hook":
        c.line(np.array([[0.02, y - 0.15], [-0.07, y + 0.04], [0.05, y + 0.05]]), ink, w)
    elif look.nose_style == "triangle":
        c.polygon(
            np.array([[0, y - 0.12], [-0.08, y + 0.05], [0.08, y + 0.05]]),
            tuple(int(v * 0.85) for v in col["skin"]),
            ink,
            w * 0.6,
        )
    elif look.nose_style == "nostrils":
        for s in (-1, 1):
            c.polygon(_ellipse(s * 0.05, y + 0.03, 0.025, 0.018), ink)
    if e.nose_wrinkle > 0.3:  # AU9: creases on both sides of the bridge
        for s in (-1, 1):
            for k in range(2 + int(e.nose_wrinkle > 0.75)):
                yy = y - 0.16 + 0.06 * k
                c.line(_bezier((s * 0.07, yy), (s * 0.12, yy - 0.03), (s * 0.17, yy + 0.01), 8), ink, w * 0.8)


def _cheeks(c: _Canvas, look: Appearance, col: dict) -> None:
    """Blush and freckles: drawn under the features."""
    if look.blush and look.rendering != "lineart":
        for s in (-1, 1):
            c.polygon(_ellipse(s * (look.eye_spacing + 0.08), look.mouth_y - 0.15, 0.13, 0.07), col["blush"])
    if look.freckles:
        for s in (-1, 1):
            for dx, dy in ((0, 0), (0.06, 0.04), (-0.05, 0.05)):
                c.polygon(
                    _ellipse(s * look.eye_spacing + dx, look.eye_y + 0.24 + dy, 0.012, 0.012), col["ink"]
                )


def _symbols_and_glasses(c: _Canvas, look: Appearance, col: dict, e: Expression) -> None:
    """Drawn over the features: a tear, sweat drop or anger vein, and clear glasses."""
    ink = col["ink"]
    if e.symbol == "tear":
        x, y = -look.eye_spacing, look.eye_y + look.eye_size + 0.08
        c.polygon(
            np.array([[x, y - 0.08], [x - 0.05, y + 0.02], [x, y + 0.07], [x + 0.05, y + 0.02]]),
            (120, 190, 250),
            ink,
            0.015,
        )
    elif e.symbol == "sweat":
        x, y = 0.75, -0.6 * look.head_aspect
        c.polygon(
            np.array([[x, y - 0.1], [x - 0.06, y + 0.03], [x, y + 0.09], [x + 0.06, y + 0.03]]),
            (150, 210, 255),
            ink,
            0.015,
        )
    elif e.symbol == "vein":
        x, y = 0.55, -0.7 * look.head_aspect
        for a in range(4):
            t = a * math.pi / 2
            d = np.array([math.cos(t), math.sin(t)])
            n = np.array([-d[1], d[0]])
            p = np.array([x, y]) + d * 0.05
            c.line(np.array([p + n * 0.04, p + d * 0.06, p - n * 0.04]), (200, 30, 30), look.stroke * 0.6)
    if look.glasses:  # clear rims: the eyes stay visible
        r = look.eye_size * 1.9
        for s in (-1, 1):
            c.polygon(_ellipse(s * look.eye_spacing, look.eye_y, r, r * 0.85), None, ink, 0.022)
        c.line(
            np.array([[-look.eye_spacing + r, look.eye_y], [look.eye_spacing - r, look.eye_y]]), ink, 0.022
        )


def draw_face(e: Expression, look: Appearance, size: int = 128) -> Image.Image:
    """An RGB image of side `size` drawing expression `e` with appearance `look`."""
    c = _Canvas(size, look)
    col = _palette(look)
    _background(c, look)
    ol = (col["ink"], col["outline"]) if col["outline"] else (None, 0.0)
    _hair(c, look, col, behind=True)
    if look.ears:
        for s in (-1, 1):
            c.polygon(_ellipse(s * 0.98, 0.05, 0.2, 0.26), col["skin"], *ol)
            if look.earrings:
                c.polygon(_ellipse(s * 1.0, 0.36, 0.05, 0.05), (240, 200, 60), col["ink"], 0.012)
    c.polygon(_head(look), col["skin"], *ol)
    _hair(c, look, col, behind=False)
    _cheeks(c, look, col)
    for side in (-1, 1):
        _eye(c, look, col, e, side)
        _brow(c, look, col, e, side)
    _nose(c, look, col, e)
    _mouth(c, look, col, e)
    _symbols_and_glasses(c, look, col, e)
    big = c.image
    if look.rendering == "edges":  # a drawing of the flat render's edges: dark lines on paper
        edges = big.convert("L").filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 24 else 0)
        edges = edges.filter(ImageFilter.MaxFilter(SUPERSAMPLE if SUPERSAMPLE % 2 else SUPERSAMPLE + 1))
        edges = ImageOps.expand(edges.crop((2, 2, c.px - 2, c.px - 2)), 2, 0)  # no frame at the border
        big = ImageOps.invert(edges).convert("RGB")
    img = big.resize((size, size), Image.LANCZOS)
    if look.rendering == "gray":
        img = ImageOps.grayscale(img).convert("RGB")
    elif look.rendering == "duotone":
        img = ImageOps.colorize(ImageOps.grayscale(img), look.duotone[0], look.duotone[1])
    return img


def face_rng(label: str, seed: int, style: int | None = None) -> np.random.Generator:
    """The generator of one face: fixed by (class, seed[, style]), independent of any other face."""
    key = [EMOJI7.index(label), int(seed), 0x6B636470]
    return np.random.default_rng(key if style is None else [*key, int(style)])


def render_face(
    label: str, seed: int, size: int = 128, style: Style | None = None
) -> tuple[Image.Image, Expression]:
    """The face number `seed` of class `label` (in `style`, or with a look of its own), and its
    expression geometry."""
    if label not in EMOJI7:
        raise ValueError(f"unknown class {label!r}: expected one of {EMOJI7}")
    rng = face_rng(label, seed, None if style is None else style.number)
    expression = sample_expression(label, rng)
    look = sample_appearance(rng) if style is None else appearance_in_style(style, rng)
    return draw_face(expression, look, size), expression


# ---------------------------------------------------------------------------------------------
# A labelled folder of faces

INDEX_FIELDS = ("path", "label", "seed", *GEOMETRY, "symbol")


@dataclass
class ProceduralBuildResult:
    out: Path
    counts: dict[str, int] = field(default_factory=dict)  # label -> images
    seconds: float = 0.0


def _render_to(job: tuple[str, int, int, str, Style | None]) -> dict:
    label, seed, size, root, style = job
    image, expression = render_face(label, seed, size, style)
    path = Path(label) / f"{seed}.png"
    target = Path(root) / path
    tmp = target.with_suffix(".tmp")
    image.save(tmp, format="PNG")
    tmp.replace(target)  # a killed build never leaves a truncated PNG under the final name
    return {"path": path.as_posix(), "label": label, "seed": seed, **asdict(expression)}


def build_procedural(
    out: str | Path,
    per_class: int = 300,
    size: int = 128,
    seed_start: int = 0,
    workers: int | None = None,
    labels: tuple[str, ...] = EMOJI7,
    style: Style | None = None,
) -> ProceduralBuildResult:
    """DIR/<label>/<seed>.png for seeds seed_start .. seed_start + per_class - 1 of every class (in
    `style`, or each face with a look of its own), with DIR/index.csv (the geometry of every face) and
    DIR/report.json. A rebuild replaces the class folders."""
    if per_class < 1 or size < 32:
        raise ValueError("--per-class must be >= 1 and --size >= 32")
    unknown = [label for label in labels if label not in EMOJI7]
    if unknown:
        raise ValueError(f"unknown classes {unknown}: expected some of {EMOJI7}")
    t0 = time.perf_counter()
    out = Path(out)
    for label in EMOJI7:
        shutil.rmtree(out / label, ignore_errors=True)
    for label in labels:
        (out / label).mkdir(parents=True, exist_ok=True)
    jobs = [
        (label, n, size, str(out), style)
        for label in labels
        for n in range(seed_start, seed_start + per_class)
    ]
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    if workers <= 1 or len(jobs) < 64:
        rows = [_render_to(j) for j in jobs]
    else:
        ctx = get_context("fork") if hasattr(os, "fork") else get_context()
        with ctx.Pool(workers) as pool:
            rows = pool.map(_render_to, jobs, chunksize=32)
    with open(out / "index.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=INDEX_FIELDS)
        w.writeheader()
        for row in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    result = ProceduralBuildResult(out, {label: per_class for label in labels}, time.perf_counter() - t0)
    report = {
        "counts": result.counts,
        "size": size,
        "per_class": per_class,
        "seed_start": seed_start,
        "license": "Apache-2.0 (drawn by kcdp_core.data.procedural_faces)",
        "style": None if style is None else asdict(style),
        "seconds": round(result.seconds, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return result


def _thumbnail(path: Path, side: int) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize((side, side), Image.LANCZOS))


def contact_sheet(out: str | Path, path: str | Path, per_row: int = 10, thumb: int = 96) -> Path:
    """One row per class (the first `per_row` faces of each folder), as a PNG."""
    from kcdp_core.pretrain.figures import image_grid

    rows, names = [], []
    for label in EMOJI7:
        folder = Path(out) / label
        files = sorted(folder.glob("*.png"), key=lambda p: int(p.stem))[:per_row] if folder.is_dir() else []
        if files:
            rows.append([_thumbnail(f, thumb) for f in files])
            names.append(label)
    if not rows:
        raise ValueError(f"{out}: no class folders with faces")
    return image_grid(rows, path, names, header="kcdp-data procedural: one row per class", label_width=90)


def style_folder(number: int) -> str:
    return f"procedural-{number}"


def build_styles(
    out: str | Path,
    styles: int,
    style_start: int = 0,
    per_class: int = 30,
    size: int = 128,
    seed_start: int = 0,
    workers: int | None = None,
) -> list[ProceduralBuildResult]:
    """OUT/domains/procedural-<n>/ for styles n = style_start .. style_start + styles - 1, each a
    build_procedural folder of its style (the layout of `kcdp-data avatars`: one target per style)."""
    if styles < 1 or style_start < 0:
        raise ValueError("--styles must be >= 1 and --style-start >= 0")
    return [
        build_procedural(
            Path(out) / "domains" / style_folder(n),
            per_class,
            size,
            seed_start,
            workers,
            style=sample_style(n),
        )
        for n in range(style_start, style_start + styles)
    ]


def styles_contact_sheet(out: str | Path, path: str | Path, per_class: int = 2, thumb: int = 64) -> Path:
    """One row per style folder under OUT/domains: its first `per_class` faces of every class, in class order."""
    from kcdp_core.pretrain.figures import image_grid

    rows, names = [], []
    for folder in sorted(
        (Path(out) / "domains").glob(style_folder("*")), key=lambda p: int(p.name.split("-")[-1])
    ):
        row = []
        for label in EMOJI7:
            files = sorted((folder / label).glob("*.png"), key=lambda p: int(p.stem))[:per_class]
            row += [_thumbnail(f, thumb) for f in files]
        if row:
            rows.append(row)
            names.append(folder.name)
    if not rows:
        raise ValueError(f"{out}: no style folders under domains/")
    header = (
        f"kcdp-data procedural --styles: one row per style, {per_class} faces of each class in order {EMOJI7}"
    )
    between_classes = tuple(per_class * (i + 1) - 1 for i in range(len(EMOJI7) - 1))
    return image_grid(rows, path, names, header=header, label_width=110, separators=between_classes)
