"""Helpers for tests that need a `tiny` KCDP model: a foundation in a temp dir and knowledge batches."""

from __future__ import annotations

from pathlib import Path

import torch

from kcdp_core.config import KCDPConfig, tiny
from kcdp_core.model.foundation import build_tiny_foundation

CAPTIONS = ["grinning face", "crying face", "angry face with horns", "neutral face"]
TRIPLETS = [[("face", "is", "happy")], [], [("face", "has", "horns"), ("face", "is", "angry")], []]


def tiny_foundation(tmp: Path) -> Path:
    return build_tiny_foundation(tmp / "tiny-foundation", seed=0)


def tiny_config(foundation: Path, **sections) -> KCDPConfig:
    cfg = tiny(foundation=str(foundation))
    return cfg.replace(**sections) if sections else cfg


def knowledge(model, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """k [n, 2L, D] and k_mask [n, 2L] from the model's own text encoder."""
    caps = [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
    trips = [TRIPLETS[i % len(TRIPLETS)] for i in range(n)]
    k, mask = model.encode_knowledge(caps, trips)
    return torch.from_numpy(k), torch.from_numpy(mask)
