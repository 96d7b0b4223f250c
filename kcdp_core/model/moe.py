"""Mixture of Experts of paper section 4.1: y = sum_i W_i E_i(a), W = TopK(Softmax(R(a))).

Batched and exportable: every expert runs on the whole batch as one batched matmul (experts are
small, so dense compute is cheaper than gathering), the top-k mask is built with scatter, and
nothing leaves the graph (no per-sample loop, no .item()).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class MoE(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_experts: int = 4,
        top_k: int = 2,
        hidden: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in 1..num_experts ({num_experts}), got {top_k}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.router = nn.Linear(in_dim, num_experts)
        # Expert i: Linear(in, hidden) -> GELU -> Dropout -> Linear(hidden, out), weights stacked on dim 0.
        self.w1 = nn.Parameter(torch.empty(num_experts, in_dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(num_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, out_dim))
        self.b2 = nn.Parameter(torch.zeros(num_experts, out_dim))
        self.dropout = nn.Dropout(dropout)
        for w, fan_in in ((self.w1, in_dim), (self.w2, hidden)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)

    def experts(self, a: torch.Tensor) -> torch.Tensor:
        """Every expert on every sample: [B, in] -> [B, E, out]."""
        h = torch.einsum("bi,eih->beh", a, self.w1) + self.b1
        h = self.dropout(F.gelu(h))
        return torch.einsum("beh,eho->beo", h, self.w2) + self.b2

    def route(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(router probabilities [B, E], gates [B, E]: the top-k probabilities and zeros elsewhere
        (paper Eq. 6: not renormalised), chosen [B, E]: 1 for the k selected experts)."""
        probs = self.router(a).softmax(dim=-1)
        top, idx = probs.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(probs).scatter(1, idx, top)
        chosen = torch.zeros_like(probs).scatter(1, idx, torch.ones_like(top))
        return probs, gates, chosen

    def balance_loss(self, probs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Switch-Transformer load balancing: E * sum_e f_e * P_e, 1 when experts are used evenly.

        f_e: fraction of the routing slots that went to expert e; P_e: its mean router probability.
        """
        f = chosen.mean(0) / self.top_k
        p = probs.mean(0)
        return self.num_experts * (f * p).sum()

    def forward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """a [B, in] -> (logits [B, out], balance loss (scalar), router probabilities [B, E])."""
        probs, gates, chosen = self.route(a)
        logits = (gates.unsqueeze(-1) * self.experts(a)).sum(dim=1)
        return logits, self.balance_loss(probs, chosen), probs
