"""Representation alignment of the UNet's middle features to the aligned image encoder (REPA).

REPA (ICLR 2025) adds, next to the denoising loss, a cosine loss between a small projection of an
intermediate diffusion feature and a frozen visual encoder's features of the clean image; U-REPA
found the middle of a U-Net the place for it. Here the target is the `mini` image encoder's
embedding (L2-normalised, computed once per corpus image): at 64 px its last feature map is 2 x 2,
so the alignment is global: an MLP on every position of the mid block's output, averaged, then
cosine. The head only shapes training; the exported UNet does not contain it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AlignmentHead(nn.Module):
    """[B, C, H, W] UNet features -> [B, D] L2-normalised, comparable with the encoder embedding."""

    def __init__(self, channels: int, hidden: int, embed_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, embed_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = features.flatten(2).transpose(1, 2)  # [B, HW, C]
        return F.normalize(self.mlp(tokens).mean(1), dim=-1)


class MidFeatures:
    """Keeps the last output of a UNet's mid block (a forward hook), for the alignment loss."""

    def __init__(self, unet: nn.Module):
        self.value: torch.Tensor | None = None
        self._handle = unet.mid_block.register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        self.value = output

    def remove(self) -> None:
        self._handle.remove()


def alignment_loss(head: AlignmentHead, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity between projected features and (normalised) target embeddings."""
    return 1 - (head(features) * F.normalize(targets, dim=-1)).sum(-1).mean()
