"""Losses of paper section 4.3 and the counterfactual contrastive loss of section 4.2."""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional as F

from kcdp_core.config import KCDPConfig
from kcdp_core.model.output import KCDPOutput


def ccl_loss(scores: torch.Tensor, labels: torch.Tensor, form: Literal["ce", "paper"] = "ce") -> torch.Tensor:
    """Counterfactual contrastive loss over the K prompts, mean over the batch.

    "ce": cross-entropy over all K prompts (the authors' code). "paper": Eq. 10, the factual prompt's
    score against the counterfactual ones only (positive left out of the denominator).
    """
    if form == "ce":
        return F.cross_entropy(scores, labels)
    if form == "paper":
        positive = scores.gather(1, labels[:, None]).squeeze(1)
        counterfactual = scores.masked_fill(F.one_hot(labels, scores.shape[1]).bool(), float("-inf"))
        return (torch.logsumexp(counterfactual, dim=1) - positive).mean()
    raise ValueError(f"unknown CCL form {form!r} (ce or paper)")


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None
) -> torch.Tensor:
    """Mean cross-entropy over the kept samples (0 when none is kept)."""
    per = F.cross_entropy(logits, labels, reduction="none")
    if keep is None:
        return per.mean()
    w = keep.to(per.dtype)
    return (per * w).sum() / w.sum().clamp(min=1.0)


def total_loss(
    config: KCDPConfig,
    out_s: KCDPOutput,
    y_s: torch.Tensor,
    scores_s: torch.Tensor | None,
    out_t: KCDPOutput | None = None,
    pseudo_t: torch.Tensor | None = None,
    keep_t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """lambda1 * CE_s + lambda2 * CE_t(pseudo, kept) + L_ccl + balance_weight * balance.

    scores_s: CLIEA scores of the source batch (None when CLIEA is off). The balance term sums the
    source and target batches' terms. `parts` holds each term (unweighted) for logging.
    """
    tc = config.train
    ce_s = F.cross_entropy(out_s.logits, y_s)
    loss = tc.lambda1 * ce_s
    parts: dict[str, float] = {"ce_s": float(ce_s.detach())}
    balance = out_s.balance_loss
    if out_t is not None and pseudo_t is not None:
        ce_t = masked_cross_entropy(out_t.logits, pseudo_t, keep_t)
        loss = loss + tc.lambda2 * ce_t
        parts["ce_t"] = float(ce_t.detach())
        if keep_t is not None:
            parts["kept_t"] = float(keep_t.float().mean())
    if out_t is not None:
        balance = balance + out_t.balance_loss
    if scores_s is not None:
        ccl = ccl_loss(scores_s, y_s, config.cliea.ccl)
        loss = loss + ccl
        parts["ccl"] = float(ccl.detach())
    loss = loss + tc.balance_weight * balance
    parts["balance"] = float(balance.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts
