"""Class centroids of the target in the FPN's output space, and the head refit on them (`kcdp-adapt --refit`).

After the target statistics step the adapted head's argmax is what kcdp-adapt answered, and CLIEA's
labels are no better (benchmarks/RESULTS.md, "kcdp-adapt"). The target's own structure is: SHOT's
self-supervised labels (Liang et al. 2020) place class centroids in feature space, weighted by the
head's probabilities, give each image its nearest centroid (cosine), recompute the centroids from those
labels and assign again. In v, the FPN's pooled output before the knowledge joins it, these labels beat
the head's argmax on drawn styles no decision had seen (`kcdp-data procedural --styles`). They are
transductive (every image labelled from all of them); an export needs a head, so the head alone (fuse and
classifier; everything below it frozen, the statistics kept) is trained on them, beside labelled source
images so that it keeps what it knew. Images only: labels of the target are never read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from kcdp_core.portable.centroids import centroid_labels as portable_centroid_labels

# Full-batch Adam steps. 100 fit the source sample and cost one fresh style's source check set 5.4 points;
# 10 cost at most 1.1 on six more while the target gained 4.9-22.7 (benchmarks/RESULTS.md, "kcdp-adapt").
REFIT_STEPS = 10
REFIT_LR = 1e-3


def centroid_labels(features: torch.Tensor, probs: torch.Tensor, steps: int = 2) -> torch.Tensor:
    """[N] labels (kcdp_core.portable.centroids, on the device of `features`): nearest class centroid
    (cosine), the first centroids weighted by `probs` [N, C]. A class with no weight drops out (a class
    the target was declared to lack, with probability 0, is never given)."""
    labels = portable_centroid_labels(
        features.detach().float().cpu().numpy(), probs.detach().float().cpu().numpy(), steps
    )
    return torch.from_numpy(labels).to(features.device)


@dataclass
class TargetFeatures:
    """What the head reads for every target image, and what it answered."""

    v: torch.Tensor  # [N, F]
    k: torch.Tensor  # [N, T, D]
    k_mask: torch.Tensor  # [N, T]
    logits: torch.Tensor  # [N, C]

    def joined(self, other: TargetFeatures) -> TargetFeatures:
        """These images followed by `other`'s."""
        return TargetFeatures(
            *(torch.cat([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self))
        )


@torch.no_grad()
def target_features(model: nn.Module, batches: Iterable[dict]) -> TargetFeatures:
    """The model (in eval mode, its statistics as they are) over `batches` of pixels, k, k_mask, face."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {"v": [], "k": [], "k_mask": [], "logits": []}
    for batch in batches:
        out = model(batch["pixels"], batch["k"], batch["k_mask"], face=batch.get("face"))
        for name, t in (
            ("v", out.features),
            ("k", batch["k"]),
            ("k_mask", batch["k_mask"]),
            ("logits", out.logits),
        ):
            parts[name].append(t)
    return TargetFeatures(**{name: torch.cat(ts) for name, ts in parts.items()})


def refit_head(
    head: nn.Module,
    found: TargetFeatures,
    labels: torch.Tensor,
    steps: int = REFIT_STEPS,
    lr: float = REFIT_LR,
    seed: int = 0,
) -> float:
    """Train `head` (a PredictionHead, in place) on the target's (v, k) -> `labels`, full batch; the
    share of `labels` its argmax gives afterwards. Deterministic for a seed (its dropout draws from a
    generator forked off the global one)."""
    optimiser = torch.optim.Adam(head.parameters(), lr=lr)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head.train()
        for _ in range(steps):
            loss = cross_entropy(head(found.v, found.k, found.k_mask)[0], labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    head.eval()
    with torch.no_grad():
        return float((head(found.v, found.k, found.k_mask)[0].argmax(1) == labels).float().mean())
