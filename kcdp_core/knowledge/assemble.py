"""k = concat(T(c), sum_i T(t_i)): the knowledge sequence, in numpy so that training and the
torch-free runtime assemble it with the same code. Torch-free."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def triplet_text(triplet: Sequence[str]) -> str:
    """How a triplet is written before encoding: "man is thrilled"."""
    return " ".join(part for part in triplet if part)


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
