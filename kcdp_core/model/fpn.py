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
    def __init__(self, in_channels: list[int], dim: int, out_dim: int, extra_dim: int = 0):
        """`extra_dim`: size of a pooled vector fused beside the levels (the image embedding)."""
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.smooth = nn.ModuleList(
            # No GroupNorm before the global pooling: it would erase each sample's per-group mean,
            # the very signal the pooled feature carries.
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.SiLU())
            for _ in in_channels
        )
        # An L2-normalised embedding has a tiny per-dimension scale: standardise it before fusing.
        self.extra_norm = nn.BatchNorm1d(extra_dim) if extra_dim else None
        self.pooled_dim = dim * len(in_channels)  # the width of pool(levels)
        self.out_dim = out_dim  # the width of v
        self.proj = nn.Linear(self.pooled_dim + extra_dim, out_dim)
        # The pooled UNet features are dominated by per-dimension constants: on a mini foundation v
        # varied across samples by ~6% of its scale, and with a per-sample LayerNorm the head fitted
        # only the class prior. BatchNorm standardises each dimension across samples (train: batch
        # statistics, per domain batch; eval: running statistics = a fixed affine, exportable). The
        # LayerNorm after it keeps v well-scaled whatever the statistics (e.g. before any training).
        self.norm = nn.Sequential(nn.BatchNorm1d(out_dim), nn.LayerNorm(out_dim))

    def forward(self, levels: list[torch.Tensor], extra: torch.Tensor | None = None) -> torch.Tensor:
        """levels ordered coarse -> fine (UNet up-block order), extra [B, extra_dim] -> v [B, out_dim]."""
        return self.fuse(self.pool(levels), extra)

    def pool(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """The levels, merged top-down, smoothed and average-pooled side by side: [B, dim * levels]."""
        laterals = [conv(x) for conv, x in zip(self.lateral, levels, strict=True)]
        merged = [laterals[0]]
        for lat in laterals[1:]:
            top = F.interpolate(merged[-1], size=lat.shape[-2:], mode="nearest")
            merged.append(lat + top)
        return torch.cat(
            [smooth(x).mean(dim=(2, 3)) for smooth, x in zip(self.smooth, merged, strict=True)], 1
        )

    def fuse(self, pooled: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """pool's output and the extra vector -> v."""
        if self.extra_norm is not None:
            if extra is None:
                raise ValueError("this FPN fuses an image embedding: pass `extra`")
            pooled = torch.cat([pooled, self.extra_norm(extra)], dim=1)
        return self.norm(self.proj(pooled))
