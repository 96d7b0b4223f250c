"""LoRA merge for export: fold the LoRA matrices into the UNet's base K/V weights (peft, in place)
and prove the merged model computes what the LoRA model computed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kcdp_export.graphs import PerceptionModule

MERGE_ATOL = 1e-4


class MergeError(RuntimeError):
    pass


@dataclass
class MergeReport:
    merged: bool  # False when the model has no LoRA (finetune frozen / kv / full)
    lora_layers: int
    max_abs_diff: float  # logits, LoRA vs merged, on the check inputs
    label_agreement: float

    def manifest(self) -> dict:
        return {
            "merged": self.merged,
            "lora_layers": self.lora_layers,
            "max_abs_diff": self.max_abs_diff,
            "label_agreement": self.label_agreement,
        }


def count_lora_layers(model: torch.nn.Module) -> int:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a training dependency
        return 0
    return sum(isinstance(m, BaseTunerLayer) for m in model.modules())


@torch.no_grad()
def merge_lora(model, check_feeds: list[dict[str, np.ndarray]], atol: float = MERGE_ATOL) -> MergeReport:
    """model.merge_lora(), then compare logits before/after on check_feeds; MergeError past atol."""
    model.eval()
    layers = count_lora_layers(model)
    if layers == 0:
        return MergeReport(False, 0, 0.0, 1.0)

    perception = PerceptionModule(model)

    def logits() -> list[torch.Tensor]:
        # the image views are the feeds' (computed by the image branch, which LoRA does not touch)
        names = ("pixels", "knowledge", "knowledge_mask", *model.image_inputs)
        return [perception(*(torch.from_numpy(f[n]) for n in names))[0] for f in check_feeds]

    before = logits()
    model.merge_lora()
    model.eval()
    left = count_lora_layers(model)
    if left:
        raise MergeError(f"merge left {left} LoRA layers in the UNet")
    after = logits()
    diff = max(float((a - b).abs().max()) for a, b in zip(before, after, strict=True))
    agree = float(
        torch.cat([a.argmax(-1) == b.argmax(-1) for a, b in zip(before, after, strict=True)]).float().mean()
    )
    report = MergeReport(True, layers, diff, agree)
    if diff > atol or agree < 1.0:
        raise MergeError(
            f"merged UNet differs from the LoRA UNet: max abs logit diff {diff:.3g} (limit {atol:g}), "
            f"label agreement {agree:.4f}"
        )
    return report
