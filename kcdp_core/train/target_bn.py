"""BatchNorm statistics of one domain (AdaBN, Li et al. 2017): per-style feature standardisation.

In DA training every target batch passes BatchNorm on its own, so the layers learn to read target
features standardised by target statistics; in eval mode they apply running statistics that mix the
source's styles with the target. Recomputing them on the unlabelled target images after training
makes the saved model read the target as training did. Only the layers a checkpoint keeps are
recomputed: the frozen image encoder's statistics come back from the foundation on loading, and
statistics downstream of a changed encoder would not fit the one that comes back. Images only:
labels are never touched. (Target statistics for CLIEA's per-epoch pseudo-labels as well, and
for the frozen encoder too, were measured: benchmarks/HISTORY.md, drawn-faces notes, session 7; the
FPN or the image tail alone, and a mix with the source's statistics: benchmarks/RESULTS.md, "Which
statistics the target step recomputes".)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_statistics(
    model: nn.Module,
    batches: Iterable[dict],
    within: Iterable[nn.Module] | None = None,
    forward: Callable[[dict], object] | None = None,
) -> int:
    """Running statistics of every BatchNorm inside `within` (default: the whole model) = the mean
    and variance over `batches` (a cumulative average, not an EMA); everything else runs in eval
    mode with its own statistics. `forward(batch)` runs the model on a batch (default: the KCDP call
    on its pixels, k, k_mask and face). Returns the number of images seen; with none (no batch of two
    or more images) the statistics stay as they were."""
    bns = [bn for root in (within or [model]) for bn in batch_norms(root)]
    was, momenta = model.training, [bn.momentum for bn in bns]
    before = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.eval()
    for bn in bns:
        bn.train()
    seen = 0
    try:
        for batch in batches:
            if len(batch["pixels"]) < 2:
                continue  # a single image has no variance to standardise by
            if forward is None:
                model(batch["pixels"], batch["k"], batch["k_mask"], face=batch.get("face"))
            else:
                forward(batch)
            seen += len(batch["pixels"])
    finally:
        for bn, momentum, state in zip(bns, momenta, before, strict=True):
            bn.momentum = momentum
            if not seen:
                bn.load_state_dict(state)
        model.train(was)
    return seen
