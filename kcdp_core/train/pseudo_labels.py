"""Which target pseudo-labels train the model (DA): selection over one epoch's CLIEA labels.

CLIEA stays the pseudo-labeller (argmax of its scores); this module only decides which of its
labels the target cross-entropy uses. Measured reason (benchmarks/RESULTS.md, "Pseudo-labels"):
with every label kept, CLIEA's target labels are as wrong as the head's own predictions and skewed
towards the source's majority class, so training on them only confirms the head.

- "all": every label (the paper, the authors' code).
- "class_fraction": per predicted class, the `fraction` most confident labels (class-balanced
  self-training, as in CBST): a class CLIEA over-predicts cannot fill the selection with its
  least confident (mostly wrong) members, and rare classes keep their most confident ones.
- "class_quota": as class_fraction, and no class above an equal share, fraction * N / (classes
  predicted): a class CLIEA over-predicts is cut to the others' size (class_fraction keeps the
  predicted proportions, skew included).
- `agreement`: only labels on which the classification head agrees with CLIEA.

Everything here is a function of predictions on unlabelled images; target labels never enter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TargetPredictions:
    """One pass over the (unlabelled) target: CLIEA's labels and confidence, the head's labels."""

    cliea: torch.Tensor  # [N] long: CLIEA argmax
    confidence: torch.Tensor  # [N] float: CLIEA softmax maximum
    head: torch.Tensor  # [N] long: classification head argmax (-1 where unknown)


def fraction_at(epoch: int, epochs: int, start: float, end: float | None) -> float:
    """The kept fraction in 0-based `epoch`: linear from `start` (first epoch) to `end` (last)."""
    if end is None or epochs <= 1:
        return start
    return start + (end - start) * min(1.0, epoch / (epochs - 1))


def class_fraction(
    labels: torch.Tensor, confidence: torch.Tensor, fraction: float, quota: int | None = None
) -> torch.Tensor:
    """keep [N] bool: per class of `labels`, its floor(fraction * count) most confident members,
    at most `quota` of them. Ties break by index (stable sort), so the selection is deterministic."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction {fraction} must lie in [0, 1]")
    keep = torch.zeros_like(labels, dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero(as_tuple=True)[0]
        n = int(fraction * len(idx) + 1e-9)  # floor: never more than the asked fraction
        if quota is not None:
            n = min(n, quota)
        if n == 0:
            continue
        order = torch.sort(confidence[idx], descending=True, stable=True).indices
        keep[idx[order[:n]]] = True
    return keep


def select(
    pred: TargetPredictions,
    mode: str,
    fraction: float = 1.0,
    agreement: bool = False,
    threshold: float | None = None,
) -> torch.Tensor:
    """keep [N] bool for one epoch's pseudo-labels `pred.cliea`."""
    keep = torch.ones_like(pred.cliea, dtype=torch.bool)
    if threshold is not None:
        keep &= pred.confidence >= threshold
    if agreement:
        keep &= pred.head == pred.cliea
    if mode == "all":
        return keep
    if mode in ("class_fraction", "class_quota"):
        # The fraction is taken among the labels the other rules left, per class.
        conf = torch.where(keep, pred.confidence, torch.full_like(pred.confidence, -1.0))
        labels = torch.where(keep, pred.cliea, -1)
        quota = None
        if mode == "class_quota":
            classes = len([c for c in torch.unique(labels).tolist() if c >= 0])
            quota = int(fraction * int(keep.sum()) / max(1, classes) + 1e-9)
        return keep & class_fraction(labels, conf, fraction, quota)
    raise ValueError(f"unknown pseudo-label selection {mode!r} (all, class_fraction, class_quota)")
