"""Torch datasets for training and evaluation: images (+ augmentation) with their knowledge k.

Records come from a class-folder dataset (`DIR/<label>/<image>`) or a CSV manifest (`path,label`).
A target domain in the DA setting is loaded with `with_labels=False`: only the image paths are
read (a manifest's label column is never parsed, a class folder's folder names are never turned
into labels), so the trainer cannot see them. Augmentation is PIL/numpy, seeded per
(seed, epoch, sample) so that a resumed run draws exactly what an uninterrupted one draws.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from kcdp_core.portable.constants import IMAGE_SUFFIXES
from kcdp_core.portable.images import FACE_BOX, ImageError, load_image, preprocess_views
from kcdp_core.train.style_augment import restyle

UNLABELLED = -1


@dataclass(frozen=True)
class Record:
    path: Path
    label: int = UNLABELLED  # index into the label set; -1 when unknown or not to be read


def _manifest_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if rows and rows[0][0].strip().lower() in ("path", "image", "file", "filename"):
        rows = rows[1:]  # header
    return rows


def load_records(source: str | Path, labels: Sequence[str], with_labels: bool = True) -> list[Record]:
    """Records of a class folder or CSV manifest, in a fixed order (sorted paths / manifest order).

    with_labels=False reads image paths only: for the unlabelled target of the DA setting.
    Labels not in `labels` raise a ValueError naming the file.
    """
    source = Path(source)
    index = {name: i for i, name in enumerate(labels)}
    if source.is_file():
        records = []
        for lineno, row in enumerate(_manifest_rows(source), start=1):
            path = Path(row[0].strip())
            path = path if path.is_absolute() else source.parent / path
            label = UNLABELLED
            if with_labels:
                if len(row) < 2 or row[1].strip() not in index:
                    got = row[1].strip() if len(row) > 1 else "<missing>"
                    raise ValueError(f"{source}: row {lineno}: label {got!r} not in {list(labels)}")
                label = index[row[1].strip()]
            records.append(Record(path, label))
        if not records:
            raise ValueError(f"{source}: manifest lists no images")
        return records
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such dataset (expected a folder DIR/<label>/<image> or a CSV)")
    if not with_labels:
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{source}: no images found")
        return [Record(p) for p in files]
    records = []
    folders = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{source}: no class subfolders (expected DIR/<label>/<image>)")
    for folder in folders:
        if folder.name not in index:
            raise ValueError(f"{folder}: class folder {folder.name!r} is not one of {list(labels)}")
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                records.append(Record(p, index[folder.name]))
    if not records:
        raise ValueError(f"{source}: no images found")
    return records


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split_validation(records: Sequence[Record], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified (train, val) indices: per class round(fraction * n) to validation, at least one
    where a class has 3 or more images. Deterministic in `seed`."""
    if fraction <= 0:
        return list(range(len(records))), []
    rng = np.random.default_rng(seed + 7919)
    by_class: dict[int, list[int]] = {}
    for i, rec in enumerate(records):
        by_class.setdefault(rec.label, []).append(i)
    train, val = [], []
    for label in sorted(by_class):
        idx = by_class[label]
        order = [idx[j] for j in rng.permutation(len(idx))]
        n_val = int(round(fraction * len(idx)))
        if n_val == 0 and len(idx) >= 3:
            n_val = 1
        n_val = min(n_val, len(idx) - 1)
        val += order[:n_val]
        train += order[n_val:]
    return sorted(train), sorted(val)


@dataclass
class AugmentConfig:
    scale: tuple[float, float] = (0.75, 1.0)  # random crop area
    rotate: float = 12.0  # degrees
    flip: float = 0.5
    jitter: float = 0.3  # brightness / contrast / saturation
    grayscale: float = 0.2  # line art is monochrome: teach colour invariance
    # Probability of redrawing the image in another style first (train/style_augment.py).
    style: float = 0.0
    # The face view's box moved and scaled by up to this fraction of its side (a new style draws its
    # face elsewhere in the frame); 0: the fixed box.
    face_box: float = 0.0


def augment(img: Image.Image, rng: np.random.Generator, cfg: AugmentConfig) -> Image.Image:
    """Sometimes another style, then random crop, flip, rotation on white, colour jitter and grayscale."""
    if cfg.style > 0 and rng.random() < cfg.style:
        img = restyle(img, rng)
    w, h = img.size
    area = rng.uniform(*cfg.scale)
    side = max(2, int(round(math.sqrt(area) * min(w, h))))
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    img = img.crop((x0, y0, x0 + side, y0 + side))
    if rng.random() < cfg.flip:
        img = ImageOps.mirror(img)
    angle = float(rng.uniform(-cfg.rotate, cfg.rotate))
    img = img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(float(rng.uniform(1 - cfg.jitter, 1 + cfg.jitter)))
    if rng.random() < cfg.grayscale:
        img = ImageOps.grayscale(img).convert("RGB")
    return img


Box = tuple[float, float, float, float]


def moved_box(box: Box, rng: np.random.Generator, amount: float) -> Box:
    """`box` (fractions of the side) scaled by 1 +- amount and moved by up to amount of its side each
    way, kept square and inside the image."""
    left, top, right, bottom = box
    side = min(1.0, (right - left) * (1 + rng.uniform(-amount, amount)))
    cx = (left + right) / 2 + rng.uniform(-amount, amount) * (right - left)
    cy = (top + bottom) / 2 + rng.uniform(-amount, amount) * (bottom - top)
    x0 = min(max(cx - side / 2, 0.0), 1.0 - side)
    y0 = min(max(cy - side / 2, 0.0), 1.0 - side)
    return (x0, y0, x0 + side, y0 + side)


class ImageKnowledgeDataset(torch.utils.data.Dataset):
    """(pixels [3,S,S], k [2L,D], k_mask [2L], label, index) per record, and with `face_view` the face
    view (face [3,F,F], F = face_view) of the same (augmented) image; images decoded once."""

    def __init__(
        self,
        records: Sequence[Record],
        k: np.ndarray,
        k_mask: np.ndarray,
        image_size: int,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        face_view: int = 0,
    ):
        if len(k) != len(records):
            raise ValueError(f"knowledge for {len(k)} images, but {len(records)} records")
        self.records = list(records)
        self.k = torch.from_numpy(np.ascontiguousarray(k, dtype=np.float32))
        self.k_mask = torch.from_numpy(np.ascontiguousarray(k_mask, dtype=np.float32))
        self.size = image_size
        self.face_view = face_view
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.images: list[Image.Image] = []
        for rec in self.records:
            try:
                self.images.append(load_image(rec.path))
            except ImageError as exc:
                raise ImageError(f"{exc} (listed in the dataset)") from None
        # Un-augmented pixels are the same every epoch: resize once.
        if augment is None:
            self._plain_cache = [self.views_of(im) for im in self.images]

    @classmethod
    def for_config(
        cls,
        config,
        records: Sequence[Record],
        k: np.ndarray,
        k_mask: np.ndarray,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> ImageKnowledgeDataset:
        """The views a model of `config` (a KCDPConfig) reads: pixels at its foundation's size, and
        the face view when it has one."""
        size, face = config.foundation.image_size, config.perception.face_view
        return cls(records, k, k_mask, size, augment, seed, face)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def views_of(self, img: Image.Image, face_box: Box = FACE_BOX) -> dict[str, torch.Tensor]:
        """pixels (and face) of a PIL image, as this dataset preprocesses it."""
        pixels, face = preprocess_views(img, self.size, self.face_view, face_box=face_box)
        views = {"pixels": torch.from_numpy(pixels)}
        if face is not None:
            views["face"] = torch.from_numpy(face)
        return views

    def views(
        self, i: int, stream: tuple[int, ...] = (), how: AugmentConfig | None = None
    ) -> dict[str, torch.Tensor]:
        """pixels (and face) of image i, augmented per epoch when the dataset augments; `stream` draws
        another augmentation of it (a second view) from a random stream of its own, `how` in another
        way than the dataset's own augmentation."""
        if self.augment is None:
            return self._plain_cache[i]
        how = how or self.augment
        rng = np.random.default_rng([self.seed, self.epoch, i, *stream])
        img = augment(self.images[i], rng, how)
        jitter = how.face_box if self.face_view else 0.0
        return self.views_of(img, moved_box(FACE_BOX, rng, jitter) if jitter > 0 else FACE_BOX)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            **self.views(i),
            "k": self.k[i],
            "k_mask": self.k_mask[i],
            "label": torch.tensor(self.records[i].label, dtype=torch.long),
            "index": torch.tensor(i, dtype=torch.long),
        }


class EpochSampler(torch.utils.data.Sampler[int]):
    """A permutation that is a pure function of (seed, epoch): data order needs no saved state."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())
