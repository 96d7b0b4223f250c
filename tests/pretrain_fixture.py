"""A tiny emoji-like corpus in the layout of `kcdp-data emoji` (corpus/captions.jsonl + domains/), drawn
with PIL: faces with different mouths and eyes in three styles, plus a few non-face shapes."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

# (codepoint, caption, mouth, face?)
EMOJIS = [
    ("1F642", "slightly smiling face: face, smile", "smile", True),
    ("1F641", "slightly frowning face: face, frown", "frown", True),
    ("1F62E", "face with open mouth: face, mouth, open", "open", True),
    ("1F610", "neutral face: face, meh, deadpan", "flat", True),
    ("1F620", "angry face: angry, face, mad", "angry", True),
    ("1F622", "crying face: cry, face, sad, tear", "tear", True),
    ("2B50", "star: star", "star", False),
    ("1F7E5", "red square: red, square", "square", False),
    ("1F53A", "red triangle pointed up: red, triangle", "triangle", False),
    ("2764", "red heart: heart", "heart", False),
    ("1F535", "blue circle: blue, circle", "circle", False),
    ("1F4A7", "droplet: drop, water", "drop", False),
]
STYLES = {
    "flat": ((250, 200, 40), (60, 40, 20), 2),
    "line": ((255, 255, 255), (0, 0, 0), 3),
    "dark": ((230, 130, 20), (30, 10, 0), 4),
}
BENCH = {"happiness": "smile", "sadness": "frown", "surprise": "open", "neutral": "flat", "anger": "angry"}


def draw(kind: str, style: str, size: int = 64) -> Image.Image:
    fill, ink, width = STYLES[style]
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    if kind in ("smile", "frown", "open", "flat", "angry", "tear"):
        d.ellipse((6, 6, 58, 58), fill=fill, outline=ink, width=width)
        d.ellipse((20, 22, 26, 30), fill=ink)
        d.ellipse((38, 22, 44, 30), fill=ink)
        if kind == "smile":
            d.arc((18, 28, 46, 50), 20, 160, fill=ink, width=width)
        elif kind == "frown":
            d.arc((18, 40, 46, 60), 200, 340, fill=ink, width=width)
        elif kind == "open":
            d.ellipse((26, 38, 38, 52), fill=ink)
        elif kind == "flat":
            d.line((20, 44, 44, 44), fill=ink, width=width)
        elif kind == "angry":
            d.line((16, 16, 28, 22), fill=ink, width=width)
            d.line((48, 16, 36, 22), fill=ink, width=width)
            d.arc((18, 40, 46, 60), 200, 340, fill=ink, width=width)
        else:
            d.arc((18, 40, 46, 60), 200, 340, fill=ink, width=width)
            d.ellipse((14, 32, 20, 42), fill=(60, 140, 255))
    elif kind == "star":
        d.polygon(
            [
                (32, 4),
                (40, 24),
                (60, 24),
                (44, 38),
                (50, 60),
                (32, 46),
                (14, 60),
                (20, 38),
                (4, 24),
                (24, 24),
            ],
            fill=fill,
            outline=ink,
        )
    elif kind == "square":
        d.rectangle(
            (10, 10, 54, 54), fill=(220, 30, 30) if style != "line" else "white", outline=ink, width=width
        )
    elif kind == "triangle":
        d.polygon(
            [(32, 8), (58, 56), (6, 56)], fill=(220, 30, 30) if style != "line" else "white", outline=ink
        )
    elif kind == "heart":
        d.ellipse((8, 10, 34, 36), fill=(220, 20, 60), outline=ink)
        d.ellipse((30, 10, 56, 36), fill=(220, 20, 60), outline=ink)
        d.polygon([(10, 28), (54, 28), (32, 58)], fill=(220, 20, 60), outline=ink)
    elif kind == "circle":
        d.ellipse(
            (8, 8, 56, 56), fill=(30, 90, 230) if style != "line" else "white", outline=ink, width=width
        )
    else:
        d.polygon([(32, 4), (50, 40), (14, 40)], fill=(60, 140, 255), outline=ink)
        d.ellipse((14, 26, 50, 60), fill=(60, 140, 255), outline=ink)
    return img


def make_fixture(root: str | Path) -> Path:
    root = Path(root)
    corpus = root / "corpus"
    (corpus / "images").mkdir(parents=True, exist_ok=True)
    with (corpus / "captions.jsonl").open("w") as f:
        for cp, caption, kind, face in EMOJIS:
            for style in STYLES:
                rel = f"images/{style}/{cp}.png"
                (corpus / rel).parent.mkdir(parents=True, exist_ok=True)
                draw(kind, style).save(corpus / rel)
                rec = {
                    "path": rel,
                    "caption": caption,
                    "codepoint": cp,
                    "domain": style,
                    "license": "CC0-1.0",
                    "group": "Smileys & Emotion" if face else "Symbols",
                    "subgroup": "face-smiling" if face else "geometric",
                }
                f.write(json.dumps(rec) + "\n")
        f.write("{not json\n")  # a bad line: reported and skipped
    for domain in ("twitter", "openmoji_black"):
        style = "flat" if domain == "twitter" else "line"
        for label, kind in BENCH.items():
            folder = root / "domains" / domain / label
            folder.mkdir(parents=True, exist_ok=True)
            draw(kind, style).save(folder / f"X{kind}.png")
    return root
