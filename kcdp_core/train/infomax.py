"""Information maximisation on the unlabelled target (SHOT-IM, Liang et al. 2020): kcdp-adapt's last step.

After DA training and AdaBN, the parts that turn frozen features into v (the image tail and the FPN's
fusion: projection and norms) are trained on the target images alone to make each prediction
confident (low entropy) while the predictions over the whole set stay spread over the classes (high
entropy of their mean; weighted by `diversity`, half of SHOT's, so that a target that really has few
classes is not pushed as hard towards all of them). The heads stay as trained: the classifier the
source taught is the fixed hypothesis the features move towards. No label enters, pseudo or other.

Everything before those parts (the UNet with its LoRA, the FPN's pooling, the frozen image trunk,
the knowledge) is computed once per image, so an epoch costs a fraction of a pass of the whole model.
Afterwards the BatchNorm statistics are recomputed on the target (AdaBN), as they were before.

Measured before it became a step (benchmarks/RESULTS.md, "kcdp-adapt"): from the default model v6 on
six labelled training styles it never trained on, +2.7 macro-F1 points over AdaBN alone on average.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kcdp_core.train.target_bn import batch_norms, recompute_statistics


@dataclass
class InfoMaxConfig:
    epochs: int = 10
    lr: float = 1e-4
    diversity: float = 0.5  # weight of the entropy of the mean prediction (SHOT: 1)
    batch_size: int = 32
    seed: int = 0


def trained_modules(model: nn.Module) -> list[nn.Module]:
    """What the step trains: the image tail (when the model has one) and the FPN's fusion."""
    fpn = model.fpn
    modules = [fpn.proj, fpn.norm] + ([fpn.extra_norm] if fpn.extra_norm is not None else [])
    return ([model.image_tail] if model.image_tail is not None else []) + modules


@torch.no_grad()
def frozen_parts(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    """What the step does not change, for one batch: the UNet's pooled levels, the knowledge, and
    the image branch up to the trained tail (the frozen trunk maps) or its frozen embedding."""
    pixels, k, k_mask = batch["pixels"], batch["k"], batch["k_mask"]
    parts = {"pooled": model.pooled_levels(pixels, k, k_mask), "k": k, "k_mask": k_mask}
    if model.image_tail is not None:
        # In KCDPModel.image_views' order: the whole image, then the face view.
        parts["trunk"] = model.image_encoder.trunk(pixels, model.image_tail.size)
        if model.face_view:
            parts["face_trunk"] = model.image_encoder.trunk(batch["face"], model.image_tail.size)
    elif model.config.perception.image_embedding:
        parts["image_view"] = model.image_view(pixels)
    return parts


def output(model: nn.Module, parts: dict[str, torch.Tensor]):
    """The model's output (KCDPOutput) from `frozen_parts`: the same as model(batch)."""
    view = parts.get("image_view")
    if "trunk" in parts:
        trunks = [parts[key] for key in ("trunk", "face_trunk") if key in parts]
        view = torch.cat([model.image_tail(t) for t in trunks], dim=1)
    return model.from_pooled_levels(parts["pooled"], parts["k"], parts["k_mask"], view)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p + 1e-8)).sum(dim=-1)


def _slices(parts: dict[str, torch.Tensor], order: torch.Tensor, size: int) -> list[dict]:
    # Batches of one image have no batch statistics: they are dropped, as in training.
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    return [{key: t[idx] for key, t in parts.items()} for idx in chunks if len(idx) >= 2]


def information_maximisation(model: nn.Module, batches, config: InfoMaxConfig) -> dict[str, list[float]]:
    """Train `model`'s `trained_modules` in place on the unlabelled `batches` (dicts of pixels, k,
    k_mask[, face]; any label is ignored), then recompute its kept BatchNorm statistics on them.
    Returns per epoch the mean entropy of a prediction and the entropy of the mean prediction."""
    model.eval()
    cached = [frozen_parts(model, b) for b in batches]
    parts = {key: torch.cat([c[key] for c in cached]) for key in cached[0]}
    n = len(parts["k"])
    was = {name: p.requires_grad for name, p in model.named_parameters()}
    params = [p for m in trained_modules(model) for p in m.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    bns = [bn for m in trained_modules(model) for bn in batch_norms(m)]
    history: dict[str, list[float]] = {"entropy": [], "entropy_of_mean": []}
    try:
        for _ in range(config.epochs):
            model.eval()
            for bn in bns:
                bn.train()  # target batch statistics, as DA training reads a target batch
            for batch in _slices(parts, torch.randperm(n, generator=generator), config.batch_size):
                probs = output(model, batch).probs
                loss = _entropy(probs).mean() - config.diversity * _entropy(probs.mean(dim=0))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                probs = output(model, parts).probs
            history["entropy"].append(round(float(_entropy(probs).mean()), 4))
            history["entropy_of_mean"].append(round(float(_entropy(probs.mean(dim=0))), 4))
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(was[name])
    recompute_statistics(
        model,
        _slices(parts, torch.arange(n), config.batch_size),
        within=list(model.statistics_modules().values()),
        forward=lambda batch: output(model, batch),
    )
    return history
