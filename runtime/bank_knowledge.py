"""Knowledge precomputed per caption-bank caption: caption_bank/knowledge.safetensors. Torch-free.

A top-1 retrieval captioner only ever returns bank captions, and k = concat(T(c), sum_i T(t_i))
depends on the caption alone, so kcdp-export computes every bank caption's k once with the fp32
text encoder and stores it here: at run time the text encoder and the parser leave the hot path
(a row lookup instead of ~3 ms of MiniLM per image on two cores).

Only the unmasked tokens are stored (perception masks the rest: its cross-attention and pool(k)
never read them), row after row: `values` [T, D], `mask` [N, 2L] uint8 says where each caption's
tokens go. int8 exports store `values` as symmetric int8 with one scale per channel (`scale` [D]);
the int8 perception graph rounds k far more coarsely at its first QuantizeLinear anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

FILE = "caption_bank/knowledge.safetensors"
DTYPES = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}


class BankKnowledge:
    """k and its mask for bank row i: `get([i, ...])` -> k [B, 2L, D] float32, mask [B, 2L] float32."""

    def __init__(self, values: np.ndarray, mask: np.ndarray, scale: np.ndarray | None = None):
        self.values = values
        self.mask = mask.astype(bool)
        self.scale = scale
        counts = self.mask.sum(axis=1)
        if int(counts.sum()) != len(values):
            raise ValueError(
                f"bank knowledge: mask selects {int(counts.sum())} tokens, values hold {len(values)}"
            )
        self.offsets = np.concatenate([[0], np.cumsum(counts)])

    def __len__(self) -> int:
        return len(self.mask)

    @property
    def dtype(self) -> str:
        return next(k for k, v in DTYPES.items() if self.values.dtype == v)

    def get(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        length, dim = self.mask.shape[1], self.values.shape[1]
        k = np.zeros((len(rows), length, dim), np.float32)
        for b, row in enumerate(rows):
            tokens = self.values[self.offsets[row] : self.offsets[row + 1]].astype(np.float32)
            k[b, self.mask[row]] = tokens * self.scale if self.scale is not None else tokens
        return k, self.mask[list(rows)].astype(np.float32)

    @classmethod
    def pack(cls, k: np.ndarray, mask: np.ndarray, precision: str = "fp32") -> BankKnowledge:
        """From dense k [N, 2L, D] and mask [N, 2L] (what assemble_batch returns)."""
        keep = mask > 0
        tokens = k[keep].astype(np.float32)
        if precision == "int8":
            scale = np.abs(tokens).max(axis=0) / 127.0
            scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
            values = np.clip(np.round(tokens / scale), -127, 127).astype(np.int8)
            return cls(values, keep, scale)
        return cls(tokens.astype(DTYPES[precision]), keep)

    def save(self, path: str | Path) -> None:
        arrays = {"values": self.values, "mask": self.mask.astype(np.uint8)}
        if self.scale is not None:
            arrays["scale"] = self.scale
        # bytes through Path.write_bytes: the usual umask permissions (save_file wrote 0600)
        Path(path).write_bytes(save(arrays))

    @classmethod
    def load(cls, path: str | Path) -> BankKnowledge:
        arrays = load_file(str(path))
        return cls(arrays["values"], arrays["mask"], arrays.get("scale"))
