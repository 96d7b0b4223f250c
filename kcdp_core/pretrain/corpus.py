"""The pretraining corpus (`kcdp-data emoji`'s corpus/captions.jsonl) and the benchmark domains, in memory.

Every image is decoded once at the training size and kept as uint8 (20k images at 64 px are ~250 MB),
cached as .npy next to the run so a resumed stage does not decode 20k PNGs again. The held-out split
is BY EMOJI: every style of a held-out codepoint is held out, so retrieval is measured on emojis the
encoder never saw.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kcdp_core.images import ImageError, load_pixels

# Emoji faces carry the emotion signal (DESIGN.md section 7): CLDR group + a face subgroup.
FACE_GROUP = "Smileys & Emotion"


def is_face(group: str, subgroup: str) -> bool:
    return group == FACE_GROUP and "face" in subgroup


@dataclass
class Corpus:
    """Captioned images, uint8 [N, S, S, 3], with per-image metadata and the held-out split."""

    images: np.ndarray
    captions: list[str]
    codepoints: list[str]
    domains: list[str]
    faces: np.ndarray  # bool [N]
    heldout: np.ndarray  # bool [N]
    vocabulary: list[str]  # unique captions, sorted
    caption_ids: np.ndarray  # int64 [N], index into vocabulary

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def train_index(self) -> np.ndarray:
        return np.flatnonzero(~self.heldout)

    @property
    def heldout_index(self) -> np.ndarray:
        return np.flatnonzero(self.heldout)

    def train_vocabulary(self) -> list[int]:
        """Vocabulary ids of the captions of the training split."""
        return sorted(set(self.caption_ids[self.train_index].tolist()))


def corpus_file(data: str | Path) -> Path:
    """captions.jsonl given the kcdp-data output folder, its corpus/ folder or the file itself."""
    data = Path(data)
    for candidate in (data, data / "captions.jsonl", data / "corpus" / "captions.jsonl"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{data}: no corpus here (expected corpus/captions.jsonl)")


def _resolve_image(path: str, corpus_dir: Path) -> Path:
    p = Path(path)
    if p.is_absolute():
        return p
    for base in (corpus_dir, corpus_dir.parent):
        if (base / p).exists():
            return base / p
    return corpus_dir / p


def heldout_codepoints(codepoints: list[str], fraction: float, seed: int) -> set[str]:
    """A deterministic `fraction` of the distinct codepoints (rounded, at least one when fraction > 0)."""
    unique = sorted(set(codepoints))
    if fraction <= 0 or not unique:
        return set()
    count = max(1, round(fraction * len(unique)))
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i] for i in order[:count]}


def load_corpus(
    data: str | Path,
    size: int = 64,
    heldout_fraction: float = 0.05,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
) -> Corpus:
    """Read captions.jsonl and decode its images at `size` px; bad lines/images are reported and skipped."""
    path = corpus_file(data)
    raw = path.read_bytes()
    records: list[dict] = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not rec.get("path") or not rec.get("caption"):
                raise ValueError("needs 'path' and 'caption'")
        except ValueError as exc:
            print(f"{path}:{number}: skipped ({exc})", file=sys.stderr)
            continue
        records.append(rec)
    if limit is not None:
        records = records[:limit]

    key = hashlib.sha256(raw + f"|{size}|{limit}".encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"corpus-{key}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            images, keep = z["images"], z["keep"]
    else:
        images, keep = _decode(records, path.parent, size)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, images=images, keep=keep)
            tmp.replace(cache)
    records = [r for r, k in zip(records, keep, strict=True) if k]
    if not records:
        raise ValueError(f"{path}: no usable images")

    captions = [str(r["caption"]).strip() for r in records]
    codepoints = [str(r.get("codepoint") or r["caption"]) for r in records]
    held = heldout_codepoints(codepoints, heldout_fraction, seed)
    vocabulary = sorted(set(captions))
    index = {c: i for i, c in enumerate(vocabulary)}
    return Corpus(
        images=images,
        captions=captions,
        codepoints=codepoints,
        domains=[str(r.get("domain", "")) for r in records],
        faces=np.array([is_face(str(r.get("group", "")), str(r.get("subgroup", ""))) for r in records]),
        heldout=np.array([c in held for c in codepoints]),
        vocabulary=vocabulary,
        caption_ids=np.array([index[c] for c in captions], dtype=np.int64),
    )


def _decode(records: list[dict], corpus_dir: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    from tqdm import tqdm

    images = np.zeros((len(records), size, size, 3), dtype=np.uint8)
    keep = np.zeros(len(records), dtype=bool)
    for i, rec in enumerate(tqdm(records, desc="decode corpus", mininterval=5, file=sys.stderr)):
        try:
            pixels = load_pixels(_resolve_image(rec["path"], corpus_dir), size)
        except ImageError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        images[i] = np.round(pixels.transpose(1, 2, 0) * 255).astype(np.uint8)
        keep[i] = True
    return images[keep], keep


@dataclass
class Domain:
    """One benchmark style domain: uint8 images, their labels and codepoints."""

    name: str
    images: np.ndarray
    labels: list[str]
    codepoints: list[str]


def load_domains(data: str | Path, size: int = 64, names: list[str] | None = None) -> list[Domain]:
    """DIR/domains/<domain>/<label>/<codepoint>.png (kcdp-data emoji), sorted by domain name."""
    root = Path(data) / "domains"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no benchmark domains here")
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if names is not None and folder.name not in names:
            continue
        images, labels, cps = [], [], []
        for label_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            for file in sorted(label_dir.iterdir()):
                if file.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
                    continue
                try:
                    pixels = load_pixels(file, size)
                except ImageError as exc:
                    print(f"skipped: {exc}", file=sys.stderr)
                    continue
                images.append(np.round(pixels.transpose(1, 2, 0) * 255).astype(np.uint8))
                labels.append(label_dir.name)
                cps.append(file.stem)
        if images:
            out.append(Domain(folder.name, np.stack(images), labels, cps))
    return out


def sampling_weights(corpus: Corpus, index: np.ndarray, face_fraction: float) -> np.ndarray:
    """Per-image sampling weights over `index` so faces make up `face_fraction` of the draws.

    Faces are a few percent of the corpus but carry the emotion signal: oversample them (not drown
    them); None or 0 keeps the natural proportion.
    """
    faces = corpus.faces[index]
    weights = np.ones(len(index), dtype=np.float64)
    n_face = int(faces.sum())
    if face_fraction and 0 < n_face < len(index):
        weights[faces] = face_fraction / n_face
        weights[~faces] = (1 - face_fraction) / (len(index) - n_face)
    return weights / weights.sum()
