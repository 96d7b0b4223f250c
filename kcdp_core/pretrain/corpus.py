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

from kcdp_core.portable.images import ImageError, load_pixels

# Emoji faces carry the emotion signal (kcdp_core/data/README.md, the pilot): CLDR group + a face subgroup.
FACE_GROUP = "Smileys & Emotion"


def is_face(record: dict) -> bool:
    """Emoji faces by CLDR group/subgroup; other corpora (avatars) mark their faces with "face": true."""
    if "face" in record:
        return bool(record["face"])
    return record.get("group") == FACE_GROUP and "face" in str(record.get("subgroup", ""))


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
    # bool [N]: from a corpus after the first (the avatars beside the emoji corpus); None: all from one
    extra: np.ndarray | None = None

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


def _read_records(path: Path) -> list[dict]:
    records: list[dict] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not rec.get("path") or not rec.get("caption"):
                raise ValueError("needs 'path' and 'caption'")
        except ValueError as exc:
            print(f"{path}:{number}: skipped ({exc})", file=sys.stderr)
            continue
        rec["_dir"] = path.parent  # image paths are relative to their own corpus folder
        rec["_corpus"] = path
        records.append(rec)
    return records


def load_corpus(
    data: str | Path | list[str | Path],
    size: int = 64,
    heldout_fraction: float = 0.05,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
) -> Corpus:
    """Read one or several captions.jsonl (e.g. emoji + avatars) and decode their images at `size` px.

    Bad lines/images are reported and skipped."""
    paths = [corpus_file(d) for d in (data if isinstance(data, list) else [data])]
    records = [rec for p in paths for rec in _read_records(p)]
    if limit is not None:
        records = records[:limit]

    raw = b"".join(p.read_bytes() for p in paths)
    key = hashlib.sha256(raw + f"|{size}|{limit}".encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"corpus-{key}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            images, keep = z["images"], z["keep"]
    else:
        images, keep = _decode(records, size)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, images=images, keep=keep)
            tmp.replace(cache)
    records = [r for r, k in zip(records, keep, strict=True) if k]
    if not records:
        raise ValueError(f"{', '.join(map(str, paths))}: no usable images")

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
        faces=np.array([is_face(r) for r in records]),
        heldout=np.array([c in held for c in codepoints]),
        vocabulary=vocabulary,
        caption_ids=np.array([index[c] for c in captions], dtype=np.int64),
        extra=np.array([r["_corpus"] != paths[0] for r in records]) if len(paths) > 1 else None,
    )


def _decode(records: list[dict], size: int) -> tuple[np.ndarray, np.ndarray]:
    from tqdm import tqdm

    images = np.zeros((len(records), size, size, 3), dtype=np.uint8)
    keep = np.zeros(len(records), dtype=bool)
    for i, rec in enumerate(tqdm(records, desc="decode corpus", mininterval=5, file=sys.stderr)):
        try:
            pixels = load_pixels(_resolve_image(rec["path"], rec["_dir"]), size)
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


# Share of the draws for the images of the extra corpora (avatars), when there are any.
EXTRA_FRACTION = 0.3


def sampling_weights(
    corpus: Corpus, index: np.ndarray, face_fraction: float, extra_fraction: float = EXTRA_FRACTION
) -> np.ndarray:
    """Per-image sampling weights over `index`: emoji faces make up `face_fraction` of the draws and
    the extra corpora (avatars, all faces) `extra_fraction`, the other emojis the rest.

    Emoji faces are a few percent of the emoji corpus but carry its emotion signal: oversample them,
    and keep thousands of avatar faces from drowning them. None or 0 keeps the natural proportion.
    """
    extra = corpus.extra[index] if corpus.extra is not None else np.zeros(len(index), dtype=bool)
    groups = {
        "faces": (corpus.faces[index] & ~extra, face_fraction),
        "extra": (extra, extra_fraction if extra.any() else 0.0),
    }
    weights = np.ones(len(index), dtype=np.float64)
    rest = np.ones(len(index), dtype=bool)
    rest_share = 1.0
    for members, share in groups.values():
        n = int(members.sum())
        if share and 0 < n < len(index):
            weights[members] = share / n
            rest &= ~members
            rest_share -= share
    if rest.any() and rest_share < 1.0:
        weights[rest] = max(rest_share, 0.0) / int(rest.sum())
    return weights / weights.sum()
