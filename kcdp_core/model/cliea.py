"""CLIEA (paper section 4.2): language-image emotional alignment that scores the K classes.

s_j = MHA(T(p_j) ⊕ k): the prompt tokens of "A {label} photo of" attend over prompt ⊕ k and are
pooled; v' = MLP(v); score_j = cos(v', s_j) / tau. Trained with the counterfactual contrastive loss
on the source; its argmax labels the target. The prompt token states come from the frozen text
encoder once, at construction, and are kept as buffers (no text encoder in the forward pass).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kcdp_core.config import CLIEAConfig
from kcdp_core.model.losses import ccl_loss


class CLIEA(nn.Module):
    def __init__(
        self,
        config: CLIEAConfig,
        feature_dim: int,
        text_dim: int,
        prompt_states: torch.Tensor,
        prompt_mask: torch.Tensor,
    ):
        """prompt_states [C, Lp, D] and prompt_mask [C, Lp]: the encoded class prompts."""
        super().__init__()
        self.config = config
        self.register_buffer("prompt_states", prompt_states.float().clone(), persistent=False)
        self.register_buffer("prompt_mask", prompt_mask.float().clone(), persistent=False)
        dim = config.dim
        self.text_proj = nn.Linear(text_dim, dim)
        self.attn = nn.MultiheadAttention(dim, config.num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.text_out = nn.Linear(dim, dim)
        self.visual = nn.Sequential(nn.Linear(feature_dim, dim), nn.GELU(), nn.Linear(dim, dim))

    @property
    def num_classes(self) -> int:
        return int(self.prompt_states.shape[0])

    def prompt_embeddings(self, k: torch.Tensor, k_mask: torch.Tensor) -> torch.Tensor:
        """s [B, C, dim]: every class prompt contextualised by each sample's knowledge."""
        b, c = k.shape[0], self.num_classes
        lp = self.prompt_states.shape[1]
        prompts = self.text_proj(self.prompt_states).unsqueeze(0).expand(b, -1, -1, -1)  # [B, C, Lp, dim]
        know = self.text_proj(k).unsqueeze(1).expand(-1, c, -1, -1)  # [B, C, T, dim]
        seq = torch.cat([prompts, know], dim=2).flatten(0, 1)  # [B*C, Lp+T, dim]
        pmask = self.prompt_mask.unsqueeze(0).expand(b, -1, -1)
        kmask = k_mask.unsqueeze(1).expand(-1, c, -1)
        mask = torch.cat([pmask, kmask], dim=2).flatten(0, 1)  # [B*C, Lp+T], 1 = real token
        query = seq[:, :lp]
        attended, _ = self.attn(query, seq, seq, key_padding_mask=mask < 0.5, need_weights=False)
        tokens = self.norm(query + attended)
        w = mask[:, :lp].unsqueeze(-1)
        pooled = (tokens * w).sum(1) / w.sum(1).clamp(min=1.0)
        return self.text_out(pooled).unflatten(0, (b, c))

    def forward(self, features: torch.Tensor, k: torch.Tensor, k_mask: torch.Tensor) -> torch.Tensor:
        """Scores [B, C] = cos(MLP(v), s_j) / tau."""
        s = F.normalize(self.prompt_embeddings(k, k_mask), dim=-1)
        v = F.normalize(self.visual(features), dim=-1)
        return torch.einsum("bd,bcd->bc", v, s) / self.config.tau

    def loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The counterfactual contrastive loss, in the form the config names ("ce" or "paper")."""
        return ccl_loss(scores, labels, self.config.ccl)

    def pseudo_labels(
        self, scores: torch.Tensor, threshold: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(argmax labels [B] long, keep [B] bool: softmax confidence >= threshold, all True without one).

        `threshold` overrides the config's for this call.
        """
        threshold = self.config.threshold if threshold is None else threshold
        probs = scores.detach().softmax(dim=-1)
        conf, labels = probs.max(dim=-1)
        if threshold is None:
            keep = torch.ones_like(labels, dtype=torch.bool)
        else:
            keep = conf >= threshold
        return labels, keep
