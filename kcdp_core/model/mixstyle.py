"""MixStyle (Zhou et al., ICLR 2021): domain generalisation by mixing feature statistics between images.

During training, with probability p per batch, each image's per-channel feature mean and std are replaced
by a convex mix of its own and another image's of the batch (weights ~ Beta(alpha, alpha)); the normalised
content stays. The source of a leave-one-style-out task holds several styles in one batch, so the model
sees the same content under interpolated styles. Identity in eval mode and in every export.
"""

from __future__ import annotations

import torch
from torch import nn


class MixStyle(nn.Module):
    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6):
        super().__init__()
        self.p, self.eps = p, eps
        self.beta = torch.distributions.Beta(alpha, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] < 2 or torch.rand(()) >= self.p:  # p <= 0: never mixes
            return x
        mu = x.mean(dim=(2, 3), keepdim=True)
        sig = (x.var(dim=(2, 3), keepdim=True) + self.eps).sqrt()
        mu, sig = mu.detach(), sig.detach()  # the statistics are mixed, not learnt through (as the paper)
        lam = self.beta.sample((x.shape[0], 1, 1, 1)).to(x.device, x.dtype)
        perm = torch.randperm(x.shape[0], device=x.device)
        mix_mu = lam * mu + (1 - lam) * mu[perm]
        mix_sig = lam * sig + (1 - lam) * sig[perm]
        return (x - mu) / sig * mix_sig + mix_mu
