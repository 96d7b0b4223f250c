"""The prediction head: a = Linear(v ⊕ pool(k)) (or Linear(v)), then the MoE or one global classifier."""

from __future__ import annotations

import torch
from torch import nn

from kcdp_core.config import HeadConfig
from kcdp_core.model.moe import MoE


def pool_knowledge(k: torch.Tensor, k_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens: [B, T, D], [B, T] -> [B, D] (torch twin of knowledge.assemble.pool_knowledge)."""
    weights = k_mask.unsqueeze(-1)
    return (k * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class PredictionHead(nn.Module):
    def __init__(self, config: HeadConfig, feature_dim: int, text_dim: int, num_classes: int):
        super().__init__()
        self.config = config
        in_dim = feature_dim + (text_dim if config.use_knowledge else 0)
        self.fuse = nn.Linear(in_dim, config.fused_dim)  # paper: a = Linear(v ⊕ k)
        if config.classifier == "moe":
            self.moe: MoE | None = MoE(
                config.fused_dim,
                num_classes,
                num_experts=config.num_experts,
                top_k=config.top_k,
                hidden=config.expert_hidden,
                dropout=config.dropout,
            )
            self.linear: nn.Linear | None = None
        elif config.classifier == "linear":
            self.moe = None
            self.linear = nn.Linear(config.fused_dim, num_classes)
        else:
            raise ValueError(f"unknown classifier {config.classifier!r} (moe or linear)")

    def fused(self, v: torch.Tensor, k: torch.Tensor, k_mask: torch.Tensor) -> torch.Tensor:
        """a [B, fused_dim]: what the classifier reads."""
        x = torch.cat([v, pool_knowledge(k, k_mask)], dim=1) if self.config.use_knowledge else v
        return self.fuse(x)

    def forward(
        self, v: torch.Tensor, k: torch.Tensor, k_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logits [B, C], balance loss (scalar; 0 for linear), router probabilities [B, E] or None)."""
        a = self.fused(v, k, k_mask)
        if self.moe is not None:
            return self.moe(a)
        logits = self.linear(a)
        return logits, logits.new_zeros(()), None
