"""Batched image augmentations for the encoder stage, in plain torch, driven by an explicit generator.

Emoji styles differ in colour, shading and line weight, so the augmentations move images across
those axes: colour jitter, grayscale, a small affine (white fill), and line-art-like transforms
(edge drawing, black-and-white silhouette) that imitate the line family (OpenMoji black, Fluent
mono, EmojiOne monotone). All inputs and outputs are float [B, 3, S, S] in [0, 1], white background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


@dataclass
class AugmentOptions:
    p_affine: float = 0.8
    max_rotate_deg: float = 12.0
    scale: tuple[float, float] = (0.85, 1.1)
    max_translate: float = 0.06  # fraction of the image side
    p_jitter: float = 0.8
    brightness: float = 0.25
    contrast: float = 0.3
    saturation: float = 0.5
    p_gray: float = 0.15
    p_edges: float = 0.15
    p_silhouette: float = 0.05


def _u(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _mask(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=g) < p).view(n, 1, 1, 1).float()


def gray(x: torch.Tensor) -> torch.Tensor:
    return (x * _LUMA.to(x)).sum(1, keepdim=True)


def affine(x: torch.Tensor, g: torch.Generator, opts: AugmentOptions) -> torch.Tensor:
    n = x.shape[0]
    angle = _u(n, -1, 1, g) * math.radians(opts.max_rotate_deg)
    scale = _u(n, *opts.scale, g)
    tx, ty = (_u(n, -1, 1, g) * 2 * opts.max_translate for _ in range(2))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Sample the inverted image so the zero padding becomes white.
    return 1 - F.grid_sample(1 - x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def jitter(x: torch.Tensor, g: torch.Generator, opts: AugmentOptions) -> torch.Tensor:
    n = x.shape[0]
    b = _u(n, 1 - opts.brightness, 1 + opts.brightness, g).view(n, 1, 1, 1)
    c = _u(n, 1 - opts.contrast, 1 + opts.contrast, g).view(n, 1, 1, 1)
    s = _u(n, 1 - opts.saturation, 1 + opts.saturation, g).view(n, 1, 1, 1)
    x = x * b
    mean = gray(x).mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * c + mean
    y = gray(x)
    x = (x - y) * s + y
    return x.clamp(0, 1)


def edges(x: torch.Tensor) -> torch.Tensor:
    """A line drawing: dark strokes where the image has edges, white elsewhere."""
    y = gray(x)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    gx = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), kx.transpose(2, 3))
    mag = torch.sqrt(gx**2 + gy**2)
    return (1 - (mag * 2.5).clamp(0, 1)).expand(-1, 3, -1, -1)


def silhouette(x: torch.Tensor) -> torch.Tensor:
    """Black on white: every pixel darker than near-white becomes ink (monotone emoji sets)."""
    return (gray(x) > 0.85).float().expand(-1, 3, -1, -1)


def augment(x: torch.Tensor, g: torch.Generator, opts: AugmentOptions | None = None) -> torch.Tensor:
    opts = opts or AugmentOptions()
    n = x.shape[0]
    m = _mask(n, opts.p_affine, g)
    x = m * affine(x, g, opts) + (1 - m) * x
    m = _mask(n, opts.p_jitter, g)
    x = m * jitter(x, g, opts) + (1 - m) * x
    m = _mask(n, opts.p_gray, g)
    x = m * gray(x).expand(-1, 3, -1, -1) + (1 - m) * x
    m_edge = _mask(n, opts.p_edges, g)
    m_sil = _mask(n, opts.p_silhouette, g) * (1 - m_edge)
    x = m_edge * edges(x) + m_sil * silhouette(x) + (1 - m_edge - m_sil) * x
    return x.clamp(0, 1)
