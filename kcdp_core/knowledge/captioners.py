"""Captioners behind one interface: a batch of PIL images in, one caption per image out.

- InstructBLIPCaptioner (`sd15`): transformers InstructBLIP from a hub id or a local folder, with the
  authors' prompt and generation settings (KnowledgeConfig).
- RetrievalCaptioner (`mini`, `tiny`): the aligned ImageEncoder embeds the image in the text
  encoder's sentence space; the top-k captions of a CaptionBank (cosine) are joined.
- CSVCaptioner: user-supplied captions (path,caption) for datasets that come with captions.

Every captioner has an `id` string that changes whenever its output could change (weights, bank,
prompt, generation settings, CSV content); the knowledge cache keys entries by it.
"""

from __future__ import annotations

import csv
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kcdp_core.config import KCDPConfig, KnowledgeConfig, Source
from kcdp_core.portable.caption_bank import CaptionBank
from kcdp_core.portable.constants import CAPTION_SEPARATOR
from kcdp_core.portable.images import preprocess

PathLike = str | Path


class CaptionError(ValueError):
    """A caption that cannot be produced for one image (e.g. no CSV row for it)."""


class Captioner(ABC):
    """`captioner(images, paths=None) -> captions`; `id` names everything the captions depend on."""

    id: str
    batch_size: int = 8

    @abstractmethod
    def __call__(self, images: Sequence[Image.Image], paths: Sequence[PathLike] | None = None) -> list[str]:
        """One caption per image. `paths` (same order) are needed only by captioners keyed by file."""


def _short_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _state_digest(module: Any) -> str:
    """sha256 over a torch module's weights (names + bytes), so retrained weights get a new id."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# -- InstructBLIP -----------------------------------------------------------------------------------


class InstructBLIPCaptioner(Captioner):
    def __init__(
        self, model: Any, processor: Any, knowledge: KnowledgeConfig, name: str, device: str = "cpu"
    ):
        self.model = model.eval().to(device)
        self.processor = processor
        self.settings = knowledge
        self.device = device
        self.batch_size = 4 if device == "cpu" else 16
        self.id = "instructblip:" + _short_hash(
            name,
            knowledge.prompt,
            knowledge.num_beams,
            knowledge.repetition_penalty,
            knowledge.min_new_tokens,
            knowledge.max_new_tokens,
        )

    @classmethod
    def from_pretrained(
        cls, source: Source | str, knowledge: KnowledgeConfig | None = None, device: str | None = None
    ) -> InstructBLIPCaptioner:
        """Any Hugging Face id or local folder (kcdp:<path> too), loaded with transformers."""
        import torch
        from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

        from kcdp_core.sources import resolve

        source = Source(source) if isinstance(source, str) else source
        path, sub = resolve(source)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        kwargs = {"subfolder": sub} if sub else {}
        processor = InstructBlipProcessor.from_pretrained(path, **kwargs)
        model = InstructBlipForConditionalGeneration.from_pretrained(path, dtype=dtype, **kwargs)
        return cls(model, processor, knowledge or KnowledgeConfig(), f"{path}:{sub}", device)

    def __call__(self, images: Sequence[Image.Image], paths: Sequence[PathLike] | None = None) -> list[str]:
        import torch

        if not images:
            return []
        s = self.settings
        inputs = self.processor(
            images=list(images), text=[s.prompt] * len(images), return_tensors="pt", padding=True
        )
        inputs = {
            k: (v.to(self.device, self.model.dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in inputs.items()
        }
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                do_sample=False,
                num_beams=s.num_beams,
                repetition_penalty=s.repetition_penalty,
                min_new_tokens=s.min_new_tokens,
                max_new_tokens=s.max_new_tokens,
            )
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]


# -- retrieval --------------------------------------------------------------------------------------


class RetrievalCaptioner(Captioner):
    """Nearest captions of a bank to the image embedding; the top-k are joined into one caption."""

    def __init__(
        self, image_encoder: Any, bank: CaptionBank, top_k: int = 1, separator: str = CAPTION_SEPARATOR
    ):
        self.encoder = image_encoder.eval()
        self.bank = bank
        self.top_k = max(1, int(top_k))
        self.separator = separator
        self.size = int(image_encoder.config.image_size)
        self.batch_size = 32
        self.id = (
            f"retrieval:{_short_hash(_state_digest(image_encoder), bank.digest(), separator)}:top{self.top_k}"
        )
        embed_dim = int(image_encoder.config.embed_dim)
        if embed_dim != bank.dim:
            raise ValueError(f"image encoder embeds to {embed_dim} dims but the caption bank has {bank.dim}")

    @classmethod
    def from_pretrained(
        cls, image_encoder: Source | str, bank_dir: PathLike | None = None, top_k: int = 1
    ) -> RetrievalCaptioner:
        """The image encoder folder (a foundation's image_encoder/) and the bank (default: the
        foundation's caption_bank/, next to the encoder: docs/architecture.md, "Foundation folder")."""
        from kcdp_core.model.image_encoder import ImageEncoder
        from kcdp_core.sources import resolve

        source = Source(image_encoder) if isinstance(image_encoder, str) else image_encoder
        path, sub = resolve(source)
        encoder = ImageEncoder.from_pretrained(path, subfolder=sub)
        if bank_dir is None:
            root = Path(path)
            bank_dir = (
                root / "caption_bank" if (root / "caption_bank").is_dir() else root.parent / "caption_bank"
            )
        return cls(encoder, CaptionBank.load(bank_dir), top_k)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        pixels = np.stack([preprocess(img, self.size) for img in images])
        with torch.inference_mode():
            return self.encoder(torch.from_numpy(pixels)).float().numpy()

    def __call__(self, images: Sequence[Image.Image], paths: Sequence[PathLike] | None = None) -> list[str]:
        if not images:
            return []
        indices, _ = self.bank.search(self.embed(images), self.top_k)
        return [self.separator.join(self.bank.captions[i] for i in row) for row in indices]


# -- CSV ----------------------------------------------------------------------------------------------


class CSVCaptioner(Captioner):
    """Captions from a CSV of path,caption (header optional). An image matches its row by path
    (as written, or resolved against the CSV's folder) or, when unambiguous, by file name."""

    def __init__(self, csv_path: PathLike):
        self.csv_path = Path(csv_path)
        if not self.csv_path.is_file():
            raise FileNotFoundError(f"{self.csv_path}: captions CSV not found")
        data = self.csv_path.read_bytes()
        self.id = "csv:" + hashlib.sha256(data).hexdigest()[:16]
        self.batch_size = 256
        self.by_path: dict[str, str] = {}
        by_name: dict[str, set[str]] = {}
        rows = csv.reader(data.decode("utf-8-sig").splitlines())
        for n, row in enumerate(rows, 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise ValueError(f"{self.csv_path}:{n}: expected path,caption, got {row!r}")
            path, caption = row[0].strip(), ",".join(row[1:]).strip()
            if n == 1 and path.lower() == "path" and caption.lower() == "caption":
                continue
            self.by_path[path] = caption
            self.by_path[str((self.csv_path.parent / path).resolve())] = caption
            by_name.setdefault(Path(path).name, set()).add(caption)
        # A file name shared by rows with different captions cannot be matched by name alone.
        self.by_name = {name: next(iter(c)) for name, c in by_name.items() if len(c) == 1}

    def lookup(self, path: PathLike) -> str:
        p = Path(path)
        for key in (str(path), str(p.resolve())):
            if key in self.by_path:
                return self.by_path[key]
        if p.name in self.by_name:
            return self.by_name[p.name]
        raise CaptionError(f"{path}: no caption for this image in {self.csv_path}")

    def __call__(self, images: Sequence[Image.Image], paths: Sequence[PathLike] | None = None) -> list[str]:
        if paths is None or len(paths) != len(images):
            raise ValueError("CSVCaptioner needs the image paths (one per image) to look captions up")
        return [self.lookup(p) for p in paths]


# -- factory ------------------------------------------------------------------------------------------


def build_captioner(
    config: KCDPConfig,
    *,
    captions_csv: PathLike | None = None,
    bank_dir: PathLike | None = None,
    device: str | None = None,
) -> Captioner:
    """The captioner a config asks for. `captions_csv` overrides the config (and the kind) when given."""
    k = config.knowledge
    csv_file = captions_csv or (k.captions_csv if k.captioner == "csv" else None)
    if csv_file is not None:
        return CSVCaptioner(csv_file)
    if k.captioner == "csv":
        raise ValueError("captioner 'csv' needs a captions CSV (knowledge.captions_csv or --captions-csv)")
    if k.captioner == "instructblip":
        if k.captioner_source is None:
            raise ValueError("captioner 'instructblip' needs knowledge.captioner_source (hub id or folder)")
        return InstructBLIPCaptioner.from_pretrained(k.captioner_source, k, device)
    if k.captioner == "retrieval":
        source = config.foundation.image_encoder
        if source is None:
            raise ValueError(f"preset {config.preset!r}: retrieval captioner needs foundation.image_encoder")
        return RetrievalCaptioner.from_pretrained(source, bank_dir, k.retrieval_top_k)
    raise ValueError(f"unknown captioner {k.captioner!r}")
