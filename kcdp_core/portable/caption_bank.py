"""The caption bank of the retrieval captioner: captions and their precomputed sentence embeddings.

Folder layout (a foundation's caption_bank/, docs/architecture.md "Foundation folder"):
    captions.jsonl           one {"caption": str, "triplets": [[s, v, o], ...] (optional)} per line
    embeddings.safetensors   {"embeddings": [N, D_text]}, L2-normalised, stored as float16 (half the
                             bytes of the committed weights; cosine ranks unchanged but for near-ties),
                             read as float32 (older float32 files load too)
                             TextEncoder.sentence_embeddings of those captions, same order
Loading and searching are numpy-only (torch-free); only `build` needs the torch text encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from kcdp_core.knowledge.text_encoder import TextEncoder

CAPTIONS = "captions.jsonl"
EMBEDDINGS = "embeddings.safetensors"


class CaptionBank:
    def __init__(
        self,
        captions: Sequence[str],
        embeddings: np.ndarray,
        triplets: Sequence[Sequence[Sequence[str]] | None] | None = None,
    ):
        # Held at the stored (float16) precision so a bank in memory and its saved copy are identical.
        embeddings = np.asarray(embeddings, dtype=np.float16).astype(np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(captions):
            raise ValueError(
                f"caption bank: {len(captions)} captions but embeddings of shape {embeddings.shape}"
            )
        if not len(captions):
            raise ValueError("caption bank: no captions")
        self.captions = list(captions)
        # Normalise again on load: an fp16 round trip or a hand-made bank must still give cosines.
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        self.embeddings = embeddings / np.maximum(norms, 1e-12)
        self.triplets = list(triplets) if triplets is not None else [None] * len(self.captions)

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def digest(self) -> str:
        """sha256 over captions and embeddings: part of the retrieval captioner's cache id."""
        h = hashlib.sha256()
        h.update(json.dumps(self.captions).encode())
        h.update(np.ascontiguousarray(self.embeddings).tobytes())
        return h.hexdigest()

    # -- search -----------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, top_k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Cosine top-k: queries [B, D] -> (indices [B, k], scores [B, k]), best first."""
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"caption bank: query shape {queries.shape}, bank dimension {self.dim}")
        q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        scores = q @ self.embeddings.T
        k = max(1, min(top_k, len(self)))
        # Ties resolve to the lower bank index, so retrieval is deterministic: argmax returns the first
        # maximum (top-1, the runtime's case, without sorting the bank), a stable sort on -score for k > 1.
        if k == 1:
            order = scores.argmax(axis=1)[:, None]
        else:
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(scores, order, axis=1)

    # -- files ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path) -> CaptionBank:
        from safetensors.numpy import load_file

        folder = Path(folder)
        cap_file, emb_file = folder / CAPTIONS, folder / EMBEDDINGS
        for path in (cap_file, emb_file):
            if not path.exists():
                raise FileNotFoundError(f"{path}: caption bank file missing")
        captions, triplets = [], []
        for n, line in enumerate(cap_file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                captions.append(str(row["caption"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{cap_file}:{n}: not a {{'caption': ...}} JSON line ({exc})") from None
            triplets.append(row.get("triplets"))
        tensors = load_file(str(emb_file))
        if "embeddings" not in tensors:
            raise ValueError(f"{emb_file}: no 'embeddings' tensor (found {sorted(tensors)})")
        try:
            return cls(captions, tensors["embeddings"].astype(np.float32), triplets)
        except ValueError as exc:
            raise ValueError(f"{folder}: {exc}") from None

    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for caption, trips in zip(self.captions, self.triplets, strict=True):
            row: dict[str, Any] = {"caption": caption}
            if trips is not None:
                row["triplets"] = [list(t) for t in trips]
            lines.append(json.dumps(row, ensure_ascii=False))
        _atomic_write(folder / CAPTIONS, ("\n".join(lines) + "\n").encode("utf-8"))
        tmp = folder / (EMBEDDINGS + ".tmp")
        save_file({"embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float16)}, str(tmp))
        os.replace(tmp, folder / EMBEDDINGS)
        return folder

    @classmethod
    def build(
        cls,
        captions: Sequence[str],
        text_encoder: TextEncoder,
        triplets: Sequence[Sequence[Sequence[str]] | None] | None = None,
        batch_size: int = 256,
    ) -> CaptionBank:
        """Embed captions with TextEncoder.sentence_embeddings (the bank's text space)."""
        captions = list(captions)
        chunks = [
            text_encoder.sentence_embeddings(captions[i : i + batch_size]).cpu().numpy()
            for i in range(0, len(captions), batch_size)
        ]
        return cls(captions, np.concatenate(chunks) if chunks else np.zeros((0, text_encoder.dim)), triplets)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
