"""Dataset loaders: simple (path, label) records, torch-free; training wraps them.

Generic layouts (DESIGN.md section 4):

- class folders: ``DIR/<label>/<image>`` (any depth below the class folder);
- CSV manifest: a header with ``path,label`` and optionally ``domain``; relative paths are relative
  to the CSV's folder; an empty label means unlabelled (a target domain in the DA setting).

The paper's datasets, as their users keep them after download (label names mapped to our sets by
``normalise_label``; a mapping to the 7 emoji classes by ``to_emoji7``):

- EmoSet-118K: ``ROOT/{train,val,test}.json``, each a JSON list of
  ``[emotion, "image/<emotion>/<emotion>_NNNNN.jpg", "annotation/<emotion>/...json"]``;
  Mikels' 8 classes.
- SER30K: ``ROOT/Images/<theme>/<file>`` and ``ROOT/Annotations/{train,val,test}.json`` (or
  ``Annotations/image-level/``), ``{"annotations": [{"topic", "file_name", "anno": 1..7}, ...]}``;
  anno is 1-based in the 7-class order anger, disgust, fear, happiness, neutral, sadness, surprise.
- EmotionROI: ``ROOT/images/<emotion>/<n>.jpg`` (anger, disgust, fear, joy, sadness, surprise);
  optional split lists ``ROOT/training_testing_split/{training,testing}.txt`` of ``<emotion>/<n>.jpg``.
- FI (Flickr & Instagram): class folders ``ROOT/<emotion>/<emotion>_<n>.jpg``, Mikels' 8 classes.
- Abstract (Machajdik & Hanbury): ``ROOT/ABSTRACT_groundTruth.csv`` (image name + one vote column
  per Mikels class) and the images beside it or in ``ROOT/abstract/``; the label is the class with
  most votes, ties are left out.
- ArtPhoto: images named ``<emotion>_<n>.jpg`` in ``ROOT`` (or below it), Mikels' 8 classes.
- Emo8: class folders ``ROOT/<emotion>/<image>`` with Mikels' 8 class names.

The emoji benchmark built by ``kcdp-data emoji`` has its own readers (``load_emoji_domain``,
``load_emoji_family``, ``load_emoji_corpus``).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kcdp_core.constants import IMAGE_SUFFIXES
from kcdp_core.labels import EMOJI7, MIKELS8


@dataclass(frozen=True)
class Sample:
    """One image: its path, its label (None when unlabelled) and optionally its domain."""

    path: Path
    label: str | None
    domain: str | None = None


class DatasetError(ValueError):
    """A dataset folder or manifest that does not have the expected layout; names the file."""


# Spellings the datasets use -> our class names.
LABEL_ALIASES: dict[str, str] = {
    "angry": "anger",
    "anger": "anger",
    "disgusted": "disgust",
    "disgust": "disgust",
    "fearful": "fear",
    "fear": "fear",
    "scared": "fear",
    "happy": "happiness",
    "happiness": "happiness",
    "joy": "happiness",
    "neutral": "neutral",
    "sad": "sadness",
    "sadness": "sadness",
    "surprise": "surprise",
    "surprised": "surprise",
    "amusement": "amusement",
    "amused": "amusement",
    "awe": "awe",
    "content": "contentment",
    "contentment": "contentment",
    "excitement": "excitement",
    "excited": "excitement",
}

# Mikels' 8 -> the 7 emoji classes, for evaluating across label sets. The positive Mikels
# classes are all forms of enjoyment (happiness); awe is closest to surprise.
MIKELS_TO_EMOJI7: dict[str, str] = {
    "amusement": "happiness",
    "contentment": "happiness",
    "excitement": "happiness",
    "awe": "surprise",
    "anger": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "sadness": "sadness",
}


def normalise_label(name: str) -> str:
    """A dataset's class name in our vocabulary ('Sad' -> 'sadness', 'joy' -> 'happiness')."""
    key = name.strip().lower()
    return LABEL_ALIASES.get(key, key)


def to_emoji7(label: str | None) -> str | None:
    """Map a label (any spelling, Mikels or emoji7) to the 7 emoji classes; None stays None."""
    if label is None:
        return None
    lab = normalise_label(label)
    if lab in EMOJI7:
        return lab
    if lab in MIKELS_TO_EMOJI7:
        return MIKELS_TO_EMOJI7[lab]
    raise ValueError(f"label {label!r} has no counterpart among {EMOJI7}")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def load_class_folders(
    root: str | Path, *, normalise: bool = False, domain: str | None = None
) -> list[Sample]:
    """DIR/<label>/<image> (any depth below the class folder), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    out: list[Sample] = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = normalise_label(cls.name) if normalise else cls.name
        out.extend(Sample(p, label, domain) for p in sorted(cls.rglob("*")) if _is_image(p))
    if not out:
        raise DatasetError(f"{root}: no images in class subfolders (expected DIR/<label>/<image>)")
    return out


def load_manifest(csv_path: str | Path, *, normalise: bool = False) -> list[Sample]:
    """A CSV with a path,label[,domain] header; relative paths are relative to the CSV's folder."""
    csv_path = Path(csv_path)
    try:
        f = open(csv_path, newline="", encoding="utf-8")
    except OSError as e:
        raise DatasetError(f"{csv_path}: cannot read ({e.strerror})") from e
    with f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if "path" not in fields:
            raise DatasetError(f"{csv_path}: needs a 'path' column (header is {fields})")
        out = []
        for i, row in enumerate(reader, start=2):
            raw = (row.get("path") or "").strip()
            if not raw:
                raise DatasetError(f"{csv_path}:{i}: empty path")
            p = Path(raw)
            p = p if p.is_absolute() else csv_path.parent / p
            label = (row.get("label") or "").strip() or None
            if label is not None and normalise:
                label = normalise_label(label)
            out.append(Sample(p, label, (row.get("domain") or "").strip() or None))
    return out


def load_dataset(source: str | Path, *, normalise: bool = False) -> list[Sample]:
    """A CSV manifest (a file) or class folders (a folder)."""
    source = Path(source)
    if source.is_file():
        return load_manifest(source, normalise=normalise)
    return load_class_folders(source, normalise=normalise)


def labels_of(samples: list[Sample]) -> tuple[str, ...]:
    """The sorted distinct labels of labelled samples."""
    return tuple(sorted({s.label for s in samples if s.label is not None}))


# --- the paper's datasets ------------------------------------------------------------------------


def load_emoset(root: str | Path, split: str = "train") -> list[Sample]:
    root = Path(root)
    path = root / f"{split}.json"
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read the EmoSet split ({e})") from e
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) < 2:
            raise DatasetError(f"{path}: entry {i} is not [emotion, image_path, ...]")
        out.append(Sample(root / row[1], normalise_label(row[0]), "emoset"))
    return out


def load_ser30k(root: str | Path, split: str = "train") -> list[Sample]:
    root = Path(root)
    candidates = [
        root / "Annotations" / f"{split}.json",
        root / "Annotations" / "image-level" / f"{split}.json",
    ]
    path = next((p for p in candidates if p.is_file()), candidates[0])
    try:
        annos = json.loads(path.read_text())["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{path}: cannot read the SER30K annotations ({e})") from e
    out = []
    for i, a in enumerate(annos):
        k = int(a["anno"]) - 1
        if not 0 <= k < len(EMOJI7):
            raise DatasetError(f"{path}: annotation {i} has anno {a['anno']}, expected 1..7")
        out.append(Sample(root / "Images" / a["topic"] / a["file_name"], EMOJI7[k], "ser30k"))
    return out


def load_emotionroi(root: str | Path, split: str | None = None) -> list[Sample]:
    """All of EmotionROI, or the 'training'/'testing' list when split is given."""
    root = Path(root)
    images = root / "images" if (root / "images").is_dir() else root
    if split is None:
        return [Sample(s.path, s.label, "emotionroi") for s in load_class_folders(images, normalise=True)]
    lst = root / "training_testing_split" / f"{split}.txt"
    try:
        lines = [ln.strip() for ln in lst.read_text().splitlines() if ln.strip()]
    except OSError as e:
        raise DatasetError(f"{lst}: cannot read the EmotionROI split ({e.strerror})") from e
    return [Sample(images / ln, normalise_label(Path(ln).parts[0]), "emotionroi") for ln in lines]


def load_fi(root: str | Path) -> list[Sample]:
    return [Sample(s.path, s.label, "fi") for s in load_class_folders(root, normalise=True)]


def load_emo8(root: str | Path) -> list[Sample]:
    return [Sample(s.path, s.label, "emo8") for s in load_class_folders(root, normalise=True)]


def load_artphoto(root: str | Path) -> list[Sample]:
    root = Path(root)
    out = []
    for p in sorted(root.rglob("*")):
        if not _is_image(p):
            continue
        m = re.match(r"([A-Za-z]+)_", p.name)
        label = normalise_label(m.group(1)) if m else None
        if label not in MIKELS8:
            raise DatasetError(f"{p}: ArtPhoto names files <emotion>_<n>.jpg; cannot read a class here")
        out.append(Sample(p, label, "artphoto"))
    if not out:
        raise DatasetError(f"{root}: no ArtPhoto images (<emotion>_<n>.jpg)")
    return out


def load_abstract(root: str | Path) -> list[Sample]:
    root = Path(root)
    gt = root / "ABSTRACT_groundTruth.csv"
    images = root / "abstract" if (root / "abstract").is_dir() else root
    try:
        text = gt.read_text(encoding="utf-8")
    except OSError as e:
        raise DatasetError(f"{gt}: cannot read the Abstract ground truth ({e.strerror})") from e
    rows = list(csv.reader(text.splitlines()))
    header = [h.strip().strip("'\"") for h in rows[0]]
    classes = [normalise_label(h) for h in header[1:]]
    out = []
    for i, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            votes = [float(v) for v in row[1:]]
        except ValueError as e:
            raise DatasetError(f"{gt}:{i}: votes are not numbers ({e})") from e
        best = max(votes)
        if votes.count(best) > 1:
            continue  # no majority: left out, as is usual for this dataset
        out.append(Sample(images / row[0].strip().strip("'\""), classes[votes.index(best)], "abstract"))
    return out


DATASET_LOADERS: dict[str, Callable[..., list[Sample]]] = {
    "emoset": load_emoset,
    "ser30k": load_ser30k,
    "emotionroi": load_emotionroi,
    "fi": load_fi,
    "abstract": load_abstract,
    "artphoto": load_artphoto,
    "emo8": load_emo8,
}


# --- the emoji benchmark (kcdp-data emoji) -------------------------------------------------------


def _fold_codepoints(root: Path, fold: int) -> set[str]:
    path = root / "splits" / f"disjoint_fold{fold}.csv"
    with open(path, newline="", encoding="utf-8") as f:
        return {r["codepoint"] for r in csv.DictReader(f)}


def load_emoji_domain(root: str | Path, domain: str, fold: int | None = None) -> list[Sample]:
    """DIR/domains/<domain>/<label>/<codepoint>.png; with fold, only that fold's emojis."""
    root = Path(root)
    samples = load_class_folders(root / "domains" / domain, domain=domain)
    if fold is not None:
        keep = _fold_codepoints(root, fold)
        samples = [s for s in samples if s.path.stem in keep]
    return samples


def load_emoji_family(root: str | Path, family: str, fold: int | None = None) -> list[Sample]:
    """DIR/families/<family>/<label>/<domain>_<codepoint>.png; the domain is read from the name."""
    root = Path(root)
    samples = [
        Sample(s.path, s.label, s.path.stem.rsplit("_", 1)[0])
        for s in load_class_folders(root / "families" / family)
    ]
    if fold is not None:
        keep = _fold_codepoints(root, fold)
        samples = [s for s in samples if s.path.stem.rsplit("_", 1)[1] in keep]
    return samples


def load_emoji_corpus(root: str | Path) -> list[dict]:
    """The captioned corpus: captions.jsonl rows with an absolute 'path'."""
    corpus = Path(root) / "corpus"
    out = []
    with open(corpus / "captions.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                row["path"] = str(corpus / row["path"])
                out.append(row)
    return out
