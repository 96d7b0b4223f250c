"""k = concat(T(c), sum_i T(t_i)): the knowledge sequence, in numpy so that training, export and the
torch-free runtime assemble it with the same code, under the same rule for what goes in. Torch-free."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Triplet = tuple[str, ...]


@dataclass(frozen=True)
class KnowledgeRule:
    """What of a caption and its triplets goes into k (config.knowledge, recorded in an export's manifest).

    The first `max_triplets` triplets; with `use_caption` off the caption is encoded as "" and with
    `use_triplets` off there are no triplets: the ablations keep k's layout, so one graph serves all.
    """

    max_triplets: int = 8
    use_caption: bool = True
    use_triplets: bool = True

    @classmethod
    def of(cls, knowledge: Any) -> KnowledgeRule:
        """From anything with the three fields (kcdp_core.config.KnowledgeConfig, the manifest's spec)."""
        return cls(int(knowledge.max_triplets), bool(knowledge.use_caption), bool(knowledge.use_triplets))

    def caption(self, text: str) -> str:
        return text if self.use_caption else ""

    def triplets(self, triplets: Sequence[Sequence[str]] | None) -> list[Triplet]:
        if not self.use_triplets or not triplets:
            return []
        return [tuple(t) for t in triplets][: self.max_triplets]

    def apply(
        self, captions: Sequence[str], triplets: Sequence[Sequence[Sequence[str]] | None]
    ) -> tuple[list[str], list[list[Triplet]]]:
        """The captions and triplet lists of a batch as the text encoder is to see them."""
        return [self.caption(c) for c in captions], [self.triplets(t) for t in triplets]


def triplet_text(triplet: Sequence[str]) -> str:
    """How a triplet is written before encoding: "man is thrilled"."""
    return " ".join(part for part in triplet if part)


def knowledge_texts(captions: Sequence[str], triplets: Sequence[Sequence[Sequence[str]]]) -> list[str]:
    """The texts of one text-encoder call, in the order assemble_batch reads their states: the B
    captions first, then every image's triplets in order."""
    return [*captions, *(triplet_text(t) for ts in triplets for t in ts)]


def assemble_knowledge(
    caption_states: np.ndarray,
    caption_mask: np.ndarray,
    triplet_states: np.ndarray,
    triplet_mask: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One image: caption [L, D] + mask [L], its triplets [M, L, D] + masks [M, L] (M may be 0).

    Returns k [2L, D] float32 and its mask [2L] float32. The triplet half is the token-wise sum of
    the triplet encodings (paper: t = sum_i T(t_i)); with no triplet it is zeros, masked out, so the
    caption alone carries the knowledge.
    """
    length, dim = caption_states.shape
    if len(triplet_states):
        tri_mask = triplet_mask.astype(np.float32)
        tri = (triplet_states * tri_mask[..., None]).sum(axis=0)
        tri_mask = tri_mask.max(axis=0)
    else:
        tri = np.zeros((length, dim), np.float32)
        tri_mask = np.zeros(length, np.float32)
    k = np.concatenate([caption_states, tri], axis=0).astype(np.float32)
    mask = np.concatenate([caption_mask.astype(np.float32), tri_mask], axis=0)
    return k, mask


def assemble_batch(
    states: np.ndarray, mask: np.ndarray, triplet_counts: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """k for a batch whose texts were encoded in one call: the B captions first, then every image's
    triplets in order (triplet_counts[i] of them for image i). Returns k [B, 2L, D] and mask [B, 2L]."""
    ks, masks, offset = [], [], len(triplet_counts)
    for i, n in enumerate(triplet_counts):
        k, m = assemble_knowledge(states[i], mask[i], states[offset : offset + n], mask[offset : offset + n])
        ks.append(k)
        masks.append(m)
        offset += n
    return np.stack(ks), np.stack(masks)


def pool_knowledge(k: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked mean over tokens: [B, S, D], [B, S] -> [B, D] (numpy twin of the model's pool(k))."""
    weights = mask[..., None]
    return (k * weights).sum(1) / np.maximum(weights.sum(1), 1.0)
