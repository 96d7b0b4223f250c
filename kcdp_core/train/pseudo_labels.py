"""Which target pseudo-labels train the model (DA): selection over one epoch's CLIEA labels.

CLIEA stays the pseudo-labeller (argmax of its scores); this module only decides which of its
labels the target cross-entropy uses. Measured reason (benchmarks/HISTORY.md, "Drawn faces: why DA did not adapt"):
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

Where the labels come from, one object per mode (`labeller`): CLIEA on each target batch as it
is drawn (`BatchPseudoLabels`, the authors' way), or one set over the whole target per epoch
(`EpochPseudoLabels`: CLIEA refreshed each epoch, or the aligned encoder's zero-shot computed once),
which the selection above then filters.

Everything here is a function of predictions on unlabelled images; target labels never enter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kcdp_core.config import KCDPConfig
from kcdp_core.portable.labels import answered


@dataclass
class TargetPredictions:
    """One pass over the (unlabelled) target: CLIEA's labels and confidence, the head's labels."""

    cliea: torch.Tensor  # [N] long: CLIEA argmax
    confidence: torch.Tensor  # [N] float: CLIEA softmax maximum
    head: torch.Tensor  # [N] long: classification head argmax (-1 where unknown)


def absent_labels(labels: Sequence[str], classes: Sequence[str] | None) -> torch.Tensor | None:
    """[C] bool: True for each of `labels` outside the target's declared `classes` (TrainConfig.
    target_classes); None when none are declared. Raises ValueError naming a class not among labels."""
    mask = answered(labels, classes)
    return None if mask is None else ~torch.tensor(mask)


def declared(scores: torch.Tensor, absent: torch.Tensor | None) -> torch.Tensor:
    """scores [N, C] with the labels the target lacks at -inf: their softmax is 0, argmax never them."""
    return scores if absent is None else scores.masked_fill(absent.to(scores.device), float("-inf"))


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


# -- where an epoch's pseudo-labels come from -----------------------------------------------------


@dataclass
class EpochLabels:
    """What one epoch trained on, in target order, for the metrics log (`how`: the mode)."""

    how: str
    pred: TargetPredictions
    keep: torch.Tensor  # [N] bool


class BatchPseudoLabels:
    """CLIEA's argmax on each target batch, with the model as it is at that step (the authors' way).

    `label` is called inside the training step; `finish_epoch` returns the last label each target
    image got this epoch (-1 where it was not drawn), for the log."""

    how = "batch"
    pool = None  # draws from the whole target

    def __init__(self, model, n_targets: int, agreement: bool, absent: torch.Tensor | None = None):
        self.model, self.n, self.agreement, self.absent = model, n_targets, agreement, absent
        self._log: EpochLabels | None = None

    def start_epoch(self, epoch: int) -> EpochLabels | None:
        n = self.n
        self._log = EpochLabels(
            "batch",
            TargetPredictions(torch.full((n,), -1), torch.zeros(n), torch.full((n,), -1)),
            torch.zeros(n, dtype=torch.bool),
        )
        return None  # nothing is known before the batches are drawn

    def label(self, index: torch.Tensor, out_t, k: torch.Tensor, k_mask: torch.Tensor):
        """(pseudo [B], keep [B]) for one target batch's model output `out_t`."""
        with torch.no_grad():
            scores = declared(self.model.cliea_scores(out_t.features.detach(), k, k_mask), self.absent)
        pseudo, keep = self.model.cliea.pseudo_labels(scores.float())
        head = declared(out_t.logits.detach(), self.absent).argmax(dim=-1)
        if self.agreement:
            keep = keep & (head == pseudo)
        if self._log is not None:
            idx, pred = index.cpu(), self._log.pred
            pred.cliea[idx] = pseudo.cpu()
            pred.confidence[idx] = scores.float().softmax(-1).max(-1)[0].cpu()
            pred.head[idx] = head.cpu()
            self._log.keep[idx] = keep.cpu()
        return pseudo, keep

    def finish_epoch(self) -> EpochLabels | None:
        log, self._log = self._log, None
        return log


class EpochPseudoLabels:
    """One set of labels over the whole (un-augmented) target per epoch, then the selection.

    `predict()` gives the predictions: CLIEA with the current model ("epoch", called every epoch) or
    the aligned encoder's zero-shot ("zeroshot", called once: its labels never change). `pool` lists
    the selected images the target sampler draws from (None: all of them)."""

    def __init__(
        self,
        how: str,
        predict: Callable[[], TargetPredictions],
        config: KCDPConfig,
        refresh: bool = True,
    ):
        self.how, self.predict, self.refresh = how, predict, refresh
        self.tc, self.threshold = config.train, config.cliea.threshold
        self._fixed = None if refresh else predict()
        self.labels: torch.Tensor | None = None
        self.keep: torch.Tensor | None = None
        self.pool: list[int] | None = None

    def start_epoch(self, epoch: int) -> EpochLabels:
        tc = self.tc
        pred = self.predict() if self.refresh else self._fixed
        ramp = tc.epochs - tc.pseudo_warmup_epochs
        fraction = fraction_at(
            epoch - tc.pseudo_warmup_epochs, ramp, tc.pseudo_fraction, tc.pseudo_fraction_end
        )
        keep = select(pred, tc.pseudo_select, fraction, tc.pseudo_agreement, self.threshold)
        self.labels, self.keep = pred.cliea, keep
        selective = tc.pseudo_select != "all" or tc.pseudo_agreement
        self.pool = keep.nonzero(as_tuple=True)[0].tolist() if selective else None
        return EpochLabels(self.how, pred, keep)

    def label(self, index: torch.Tensor, out_t, k: torch.Tensor, k_mask: torch.Tensor):
        idx, device = index.cpu(), out_t.logits.device
        return self.labels[idx].to(device), self.keep[idx].to(device)

    def finish_epoch(self) -> EpochLabels | None:
        return None  # logged when the epoch started
