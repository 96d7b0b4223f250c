"""The drawn-faces label keys, style lists and the list of training styles. Torch-free.

kcdp_core/data/README.md describes the sets and the styles in them.

avatar_label_key.csv (the project's data file, beside this module) fixes, per DiceBear style and
emotion class, the variants each expression component may take; every other part of the avatar
(hair, skin, clothes, accessories, background) stays random by seed, so only the expression
carries the class. The key is checked against the style definitions of `dicebear-styles` before
anything is rendered: a row naming an unknown style, component or variant stops the build.
avatar_extra_key.csv, avatar_labelled_key.csv and avatar_heldout_key.csv are keys of the same
format for the other style sets (STYLE_SETS).

training_styles.csv is the project's one written list of the drawn styles that may be trained,
pretrained, tuned or selected on (with the classes each shows, its art family and licence). A style
not on it is held out: load_training_styles() refuses a list that names a held-out style, and
check_trainable() is the gate for anything about to train on a set of styles.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kcdp_core.portable.labels import EMOJI7

AVATAR_KEY_CSV = Path(__file__).resolve().parent / "avatar_label_key.csv"
# Keys written by this project, in the same format: labelled corpus styles for training (extra),
# and the held-out test styles (heldout).
AVATAR_EXTRA_KEY_CSV = Path(__file__).resolve().parent / "avatar_extra_key.csv"
AVATAR_HELDOUT_KEY_CSV = Path(__file__).resolve().parent / "avatar_heldout_key.csv"
# More DiceBear styles whose parts show expressions, each labelled by eye on contact sheets.
AVATAR_LABELLED_KEY_CSV = Path(__file__).resolve().parent / "avatar_labelled_key.csv"
# The project's one list of the styles that may be trained on (see load_training_styles).
TRAINING_STYLES_CSV = Path(__file__).resolve().parent / "training_styles.csv"

# The five benchmark styles: exactly those of the key.
BENCHMARK_STYLES: tuple[str, ...] = ("avataaars", "open-peeps", "fun-emoji", "big-smile", "moods")
# Pretraining corpus only: styles with expression-named parts, and identity-only styles for variety.
CORPUS_EXPRESSION_STYLES: tuple[str, ...] = ("critters", "sprouts", "line-face", "cameo")
CORPUS_IDENTITY_STYLES: tuple[str, ...] = ("notionists", "adventurer", "lorelei", "big-ears")
CORPUS_STYLES = CORPUS_EXPRESSION_STYLES + CORPUS_IDENTITY_STYLES
# Corpus styles whose expression parts map onto the seven classes, rendered with labels as extra
# training styles (more styles to generalise from; never scored as a benchmark target).
EXTRA_STYLES: tuple[str, ...] = ("critters", "sprouts", "line-face")
# Further styles labelled by eye, each with the classes its parts can show (training_styles.csv).
LABELLED_STYLES: tuple[str, ...] = (
    "voxel-art",
    "lorelei",
    "pixel-art",
    "adventurer",
    "big-ears",
    "notionists",
    "croodles",
    "cutouts",
    "marbles",
    "bottts",
    "pixelbot",
    "voxel-bot",
    "dylan",
    # Face-only close-ups of a style above or of avataaars, with the same parts: the expression at a
    # larger scale. Same art family as their base style (a leave-one-style-out run leaves both out).
    "avataaars-neutral",
    "adventurer-neutral",
    "big-ears-neutral",
    "croodles-neutral",
    "lorelei-neutral",
    "notionists-neutral",
    "pixel-art-neutral",
)
# Held-out test styles: in none of the lists above, so never trained, pretrained or tuned on;
# rendered only to measure a finished model on styles it never saw.
HELDOUT_STYLES: tuple[str, ...] = ("toon-head", "micah", "personas", "clay")
# `kcdp-data avatars --styles NAME`: the styles and the key of each labelled set
STYLE_SETS: dict[str, tuple[tuple[str, ...], Path]] = {
    "benchmark": (BENCHMARK_STYLES, AVATAR_KEY_CSV),
    "extra": (EXTRA_STYLES, AVATAR_EXTRA_KEY_CSV),
    "labelled": (LABELLED_STYLES, AVATAR_LABELLED_KEY_CSV),
    "heldout": (HELDOUT_STYLES, AVATAR_HELDOUT_KEY_CSV),
}

# Options that keep the face visible: whatever hides eyes or mouth is switched off (dark glasses,
# eye patches, masks); the remaining accessories still vary by seed.
FACE_VISIBLE: dict[str, dict] = {
    "avataaars": {"accessoriesVariant": ["prescription01", "prescription02", "round"]},
    "open-peeps": {
        "maskProbability": 0,
        "accessoriesVariant": ["glasses", "glasses2", "glasses3", "glasses4", "glasses5"],
    },
    "big-smile": {"accessoriesVariant": ["catEars", "clownNose", "glasses", "mustache", "sailormoonCrown"]},
    "moods": {"animationVariant": ["none"]},
    "critters": {"animationVariant": ["none"]},
    "sprouts": {"animationVariant": ["none"]},
    "notionists": {"glassesVariant": ["variant01", "variant02", "variant03", "variant04", "variant05"]},
}
# The same for the labelled renders of LABELLED_STYLES, on top of FACE_VISIBLE. Kept apart so that
# the corpus renders of notionists, adventurer, lorelei and big-ears stay byte-identical. Checked on
# contact sheets: beards and moustaches cover mouths, dark glasses the eyes, long hair an eye.
LABELLED_OPTIONS: dict[str, dict] = {
    "voxel-art": {"animationVariant": ["none"], "beardProbability": 0, "glassesVariant": ["round", "square", "cat"]},
    "lorelei": {"beardProbability": 0, "glassesVariant": ["variant01", "variant03", "variant04", "variant05"]},
    "pixel-art": {"glassesProbability": 0},
    "adventurer": {"glassesProbability": 0, "hairVariant": [f"short{n:02d}" for n in range(1, 20)]},
    "notionists": {"glassesProbability": 0},
    "croodles": {"mustacheProbability": 0, "beardProbability": 0},
    "pixelbot": {"animationVariant": ["none"]},
    "voxel-bot": {"animationVariant": ["none"]},
    "adventurer-neutral": {"glassesProbability": 0},
    "lorelei-neutral": {"glassesVariant": ["variant01", "variant03", "variant04", "variant05"]},
    "notionists-neutral": {"glassesProbability": 0},
    "pixel-art-neutral": {"glassesProbability": 0},
}


@cache
def style_definition(name: str) -> dict:
    """A DiceBear style's JSON definition from the `dicebear-styles` package."""
    from importlib.resources import files

    try:
        resource = files("dicebear_styles").joinpath(f"{name}.json")
    except ModuleNotFoundError as e:
        raise RuntimeError("kcdp-data avatars needs dicebear-styles: pip install 'kcdp[train]'") from e
    if not resource.is_file():
        raise ValueError(f"unknown DiceBear style {name!r}")
    return json.loads(resource.read_text("utf-8"))


def style_variants(name: str) -> dict[str, tuple[str, ...]]:
    """component -> its variant names, for one style."""
    return {c: tuple(v.get("variants", {})) for c, v in style_definition(name)["components"].items()}


def style_credit(name: str) -> tuple[str, str]:
    """(creator, licence) as the style's definition names them."""
    meta = style_definition(name).get("meta", {})
    creator = meta.get("creator", {}).get("name", "")
    source = meta.get("source", {}).get("name", "")
    return (f"{source} by {creator}" if source else creator), meta.get("license", {}).get("name", "")


@dataclass(frozen=True)
class TrainingStyle:
    """One row of training_styles.csv."""

    style: str
    set: str  # benchmark | extra | labelled | corpus (captions only) | procedural
    family: str  # the art it shares with other rows (a close-up "-neutral" style: its base style)
    classes: tuple[str, ...]  # the classes it is labelled with; () for a captions-only corpus style
    license: str
    source: str


TRAINING_SETS = ("benchmark", "extra", "labelled", "corpus", "procedural")


@cache
def load_training_styles(path: str | Path | None = None) -> dict[str, TrainingStyle]:
    """style -> TrainingStyle from training_styles.csv; ValueError naming the file and row for a held-out
    style, a style listed twice, an unknown set or class."""
    path = Path(path) if path is not None else TRAINING_STYLES_CSV
    table: dict[str, TrainingStyle] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row_number, row in enumerate(csv.DictReader(f), start=2):
            where = f"{path}:{row_number} ({row['style']})"
            style = row["style"].strip()
            classes = tuple(row["classes"].split())
            if style in HELDOUT_STYLES:
                raise ValueError(f"{where}: {style} is held out for good and can never be a training style")
            if style in table:
                raise ValueError(f"{where}: {style} is listed twice")
            if row["set"] not in TRAINING_SETS:
                raise ValueError(f"{where}: set {row['set']!r} is not one of {TRAINING_SETS}")
            if any(c not in EMOJI7 for c in classes):
                raise ValueError(f"{where}: classes {classes} are not all in {EMOJI7}")
            table[style] = TrainingStyle(
                style, row["set"], row["family"].strip(), classes, row["license"].strip(), row["source"]
            )
    return table


def check_trainable(styles: tuple[str, ...] | list[str] | set[str]) -> None:
    """ValueError unless every style is on the list of training styles (training_styles.csv)."""
    outside = sorted(set(styles) - set(load_training_styles()))
    if outside:
        raise ValueError(
            f"{outside}: not on the list of training styles ({TRAINING_STYLES_CSV.name}); "
            "a style not on it is held out and never trained, tuned or selected on"
        )


@dataclass(frozen=True)
class StyleKey:
    """One style's classes: label -> component -> allowed variants."""

    style: str
    classes: dict[str, dict[str, tuple[str, ...]]]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label for label in EMOJI7 if label in self.classes)


def load_avatar_key(
    path: str | Path | None = None, styles: tuple[str, ...] = BENCHMARK_STYLES
) -> dict[str, StyleKey]:
    """style -> StyleKey for a key over `styles`; ValueError naming the file and row for a style
    outside them or any option DiceBear does not have."""
    path = Path(path) if path is not None else AVATAR_KEY_CSV
    table: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"style", "class", "component", "variants"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for row_number, row in enumerate(reader, start=2):
            where = f"{path}:{row_number} ({','.join(str(v) for v in row.values())})"
            style, label = row["style"].strip(), row["class"].strip()
            component = row["component"].strip()
            variants = tuple(v.strip() for v in row["variants"].split(";") if v.strip())
            if style not in styles:
                raise ValueError(f"{where}: style {style!r} is not one of {styles}")
            if label not in EMOJI7:
                raise ValueError(f"{where}: class {label!r} is not one of {EMOJI7}")
            known = style_variants(style)
            if component not in known:
                raise ValueError(f"{where}: {style} has no component {component!r} (has {sorted(known)})")
            unknown = [v for v in variants if v not in known[component]]
            if unknown or not variants:
                raise ValueError(
                    f"{where}: {style}.{component} has no variant(s) {unknown or '(none given)'}"
                )
            classes = table.setdefault(style, {}).setdefault(label, {})
            if component in classes:
                raise ValueError(f"{where}: {style}/{label}/{component} is listed twice")
            classes[component] = variants
    return {style: StyleKey(style, classes) for style, classes in table.items()}
