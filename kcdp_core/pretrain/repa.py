"""Representation alignment of UNet features to the aligned image encoder (REPA, U-REPA).

REPA (ICLR 2025) adds, next to the denoising loss, a cosine loss between a small projection of an
intermediate diffusion feature and a frozen visual encoder's features of the clean image. U-REPA
found the middle of a U-Net the place for it, with the UNet's features resized to the encoder's
token grid and compared position by position.

Here a target is a map [N, D, h, w] per corpus image, computed once: either the image encoder's
embedding ([N, D, 1, 1]: a global alignment, the first REPA run of this package) or its embedding
head applied at every position of its last feature map ("tokens", [N, D, 3, 3] at 96 px). Each
aligned UNet block ("mid", or "upI" for up block I: the levels KADAP reads) has its own MLP, applied
at every position, then pooled (or upsampled) to the target's grid. The heads only shape training;
the exported UNet does not contain them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AlignmentHead(nn.Module):
    """[B, C, H, W] UNet features -> [B, D, h, w] L2-normalised tokens on the target's grid."""

    def __init__(self, channels: int, hidden: int, embed_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, embed_dim))

    def forward(self, features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        tokens = self.mlp(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # [B, D, H, W]
        if tokens.shape[-2:] != grid:
            smaller = tokens.shape[-2] < grid[0] or tokens.shape[-1] < grid[1]
            tokens = (
                F.interpolate(tokens, size=grid, mode="bilinear", align_corners=False)
                if smaller
                else F.adaptive_avg_pool2d(tokens, grid)
            )
        return F.normalize(tokens, dim=1)


def block(unet: nn.Module, name: str) -> nn.Module:
    """The UNet block a REPA level names: "mid" the mid block, "upI" up block I."""
    if name == "mid":
        return unet.mid_block
    if name.startswith("up") and name[2:].isdigit() and int(name[2:]) < len(unet.up_blocks):
        return unet.up_blocks[int(name[2:])]
    raise ValueError(f"REPA level {name!r}: expected 'mid' or up0..up{len(unet.up_blocks) - 1}")


def block_channels(unet: nn.Module, name: str) -> int:
    """The channels of the block's output (its last resnet's)."""
    return block(unet, name).resnets[-1].out_channels


class BlockFeatures:
    """Keeps the last output of the named UNet blocks (forward hooks), for the alignment loss."""

    def __init__(self, unet: nn.Module, names: tuple[str, ...]):
        self.values: dict[str, torch.Tensor] = {}
        for n in names:
            block(unet, n).register_forward_hook(self._keeper(n))

    def _keeper(self, name: str):
        def keep(_module: nn.Module, _inputs: tuple, output) -> None:
            self.values[name] = output[0] if isinstance(output, tuple) else output

        return keep

    def pop(self) -> dict[str, torch.Tensor]:
        """The kept outputs, forgotten here (they hold the graph; a model with them cannot be copied)."""
        values, self.values = self.values, {}
        return values


def alignment_loss(
    heads: nn.ModuleDict, features: dict[str, torch.Tensor], targets: torch.Tensor
) -> torch.Tensor:
    """1 - cosine similarity between projected features and the (normalised) targets [B, D, h, w],
    averaged over positions, images and aligned blocks."""
    targets = F.normalize(targets.float(), dim=1)
    grid = tuple(targets.shape[-2:])
    losses = [1 - (heads[n](f.float(), grid) * targets).sum(1).mean() for n, f in features.items()]
    return torch.stack(losses).mean()
