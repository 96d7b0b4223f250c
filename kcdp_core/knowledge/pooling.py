"""Sentence embeddings from token states: sentence-transformers' masked mean, L2-normalised.

Its own module so that the caption bank of a foundation can be embedded while the foundation is
being built (kcdp_core.model.tiny_foundation) without the text encoder's loading code.
"""

from __future__ import annotations

import torch


def sentence_embedding(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """states [N, L, D], mask [N, L] (1 = real token) -> [N, D] unit vectors."""
    pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1)
