"""Captions for the avatar pretraining corpus, written from the options DiceBear resolved.

The corpus styles are in neither the benchmark nor the key. Their expression-named parts (angry
eyes, a frown, a grin) become words, so the foundation learns expression words on drawn faces
without seeing a benchmark style; identity-only styles add hair, glasses, beards and gestures.
Parts whose variant names carry no meaning (variant01...) are left out of the caption.
"""

from __future__ import annotations

# What each style draws, as the caption's subject.
SUBJECTS: dict[str, str] = {
    "critters": "a cartoon creature",
    "sprouts": "a cartoon potted plant with a face",
    "line-face": "a line drawing of a face",
    "cameo": "a cameo portrait of a person",
    "notionists": "a sketched portrait of a person",
    "adventurer": "a cartoon portrait of an adventurer",
    "lorelei": "a drawn portrait of a person",
    "big-ears": "a cartoon person with big ears",
}

EYES: dict[str, str] = {
    "round": "round eyes",
    "dots": "dot eyes",
    "bigPupils": "wide eyes with big pupils",
    "sideeye": "a side-eye glance",
    "inward": "crossed eyes",
    "mono": "a single eye",
    "uneven": "uneven eyes",
    "trio": "three eyes",
    "threeRow": "a row of three eyes",
    "four": "four eyes",
    "happy": "happy closed eyes",
    "closedLine": "closed eyes",
    "closed": "closed eyes",
    "close": "closed eyes",
    "wink": "a wink",
    "winkRight": "a wink",
    "squint": "squinting eyes",
    "wide": "wide open eyes",
    "sleepy": "sleepy eyes",
    "angry": "angry eyes",
    "monoSleepy": "a single sleepy eye",
    "mismatch": "mismatched eyes",
    "unevenDots": "uneven dot eyes",
}

MOUTHS: dict[str, str] = {
    "smile": "a smiling mouth",
    "tinySmile": "a tiny smile",
    "grin": "a grin",
    "laugh": "a laughing open mouth",
    "teeth": "a mouth showing its teeth",
    "ooh": "a round ooh mouth",
    "line": "a flat straight mouth",
    "smirk": "a smirk",
    "wavy": "a wavy uneasy mouth",
    "catMouth": "a cat mouth",
    "zigzag": "a zigzag mouth",
    "frown": "a frowning mouth",
    "sad": "a sad mouth",
    "slant": "a slanted mouth",
    "dot": "a small dot mouth",
    "open": "an open mouth",
    "tooth": "a buck tooth",
    "tongue": "a tongue sticking out",
    "blep": "the tip of a tongue sticking out",
    "soft": "a soft smile",
    "pleased": "a pleased smile",
    "shy": "a shy smile",
    "beam": "a beaming smile",
    "calm": "a calm closed mouth",
}

GESTURES: dict[str, str] = {
    "hand": "raising a hand",
    "handPhone": "holding a phone",
    "ok": "making an OK sign",
    "okLongArm": "making an OK sign",
    "point": "pointing",
    "pointLongArm": "pointing",
    "waveLongArm": "waving",
    "waveLongArms": "waving both arms",
    "waveOkLongArms": "waving",
    "wavePointLongArms": "waving and pointing",
}


def _hair(variant: str | None) -> str | None:
    if not variant:
        return None
    if variant.startswith("long"):
        return "long hair"
    if variant.startswith("short"):
        return "short hair"
    if variant == "hat":
        return "a hat"
    return None


def caption_parts(style: str, options: dict) -> list[str]:
    """The phrases a caption is made of: one per meaningful part the avatar shows."""
    v = {k[: -len("Variant")]: val for k, val in options.items() if k.endswith("Variant")}
    parts: list[str] = []
    if v.get("eyes") in EYES:
        parts.append(EYES[v["eyes"]])
    mouth = v.get("mouth")
    if mouth in MOUTHS:
        parts.append(MOUTHS[mouth])
    elif isinstance(mouth, str) and mouth.startswith(("happy", "sad")):  # lorelei: happy01.., sad01..
        parts.append("a happy mouth" if mouth.startswith("happy") else "a sad mouth")
    if v.get("cheeks") in ("blush", "blushBig"):
        parts.append("blushing cheeks")
    hair = _hair(v.get("hair"))
    if hair:
        parts.append(hair)
    if v.get("glasses"):
        parts.append("glasses")
    if v.get("beard"):
        parts.append("a beard")
    return parts


def avatar_caption(style: str, options: dict) -> str:
    """'a cartoon creature with angry eyes and a frowning mouth' (+ ', waving' for a gesture)."""
    subject = SUBJECTS.get(style, "a drawn avatar")
    parts = caption_parts(style, options)
    text = subject
    if parts:
        text += " with " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])
    gesture = options.get("gestureVariant")
    if gesture in GESTURES:
        text += ", " + GESTURES[gesture]
    return text
