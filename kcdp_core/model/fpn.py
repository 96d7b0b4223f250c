"""Feature pyramid network (Lin et al. 2017) fusing the UNet levels h_i into the visual feature v.

Plain torch (no torchvision): lateral 1x1 convs, a top-down pathway (coarse levels upsampled and
added to finer ones), 3x3 smoothing, then every level is average-pooled and the concatenation is
projected (and layer-normalised) to v.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], dim: int, out_dim: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.smooth = nn.ModuleList(
            # No GroupNorm before the global pooling: it would erase each sample's per-group mean,
            # the very signal the pooled feature carries.
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.SiLU())
            for _ in in_channels
        )
        self.proj = nn.Linear(dim * len(in_channels), out_dim)
        # UNet activations differ wildly in scale between foundations (and are tiny in random ones);
        # a LayerNorm on v gives the head and CLIEA a well-scaled input whatever the foundation.
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """levels ordered coarse -> fine (UNet up-block order) -> v [B, out_dim]."""
        laterals = [conv(x) for conv, x in zip(self.lateral, levels, strict=True)]
        merged = [laterals[0]]
        for lat in laterals[1:]:
            top = F.interpolate(merged[-1], size=lat.shape[-2:], mode="nearest")
            merged.append(lat + top)
        pooled = [smooth(x).mean(dim=(2, 3)) for smooth, x in zip(self.smooth, merged, strict=True)]
        return self.norm(self.proj(torch.cat(pooled, dim=1)))
