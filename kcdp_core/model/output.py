"""What KCDPModel.forward returns: its own module so the losses read it without importing the model."""

from __future__ import annotations

from typing import NamedTuple

import torch


class KCDPOutput(NamedTuple):
    """A NamedTuple so that tracing/ONNX export sees a plain tuple."""

    logits: torch.Tensor  # [B, C]
    probs: torch.Tensor  # [B, C]
    features: torch.Tensor  # v [B, F]
    balance_loss: torch.Tensor  # scalar (0 for the linear head)
    router_probs: torch.Tensor | None  # [B, E] or None
