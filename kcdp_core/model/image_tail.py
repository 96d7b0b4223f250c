"""ImageTail: a trainable copy of the aligned image encoder's last stages, the image view KCDP fuses into v.

The frozen encoder's embedding separates the expressions of full-body avatar styles poorly even inside
one style (benchmarks/RESULTS.md, probes: macro-F1 .44-.63 in avataaars, open-peeps, big-smile). Measured
before building this, a plain classifier with the last five stages trained on the default model's data
scored macro-F1 .75 on unseen avatar seeds (the default model v3: .57) and accuracy .98 on the unseen
emoji styles (v3: .83); the default model v4 with a 3-stage tail: .84 and .91. The frozen encoder itself
is left alone: its embedding must stay in the caption bank's space for the retrieval captioner. The copy
starts from the frozen stages and reads the frozen trunk's feature map, so the two share every earlier
stage (one trunk pass at inference, in the exported image encoder graph).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kcdp_core.model.image_encoder import ImageEncoder
from kcdp_core.model.mixstyle import MixStyle


class ImageTail(nn.Module):
    def __init__(
        self, encoder: ImageEncoder, stages: int, mix_style: float = 0.0, freeze_statistics: bool = False
    ):
        super().__init__()
        chain = encoder.stages()
        if not 0 < stages < len(chain):
            raise ValueError(f"perception.image_tail = {stages}: the image encoder has {len(chain)} stages")
        self.size = stages
        self.stages = nn.ModuleList(copy.deepcopy(s) for s in chain[-stages:])
        self.dim = encoder.width
        # Training only: style statistics mixed at the tail's input and after its first stage.
        self.mix = MixStyle(p=mix_style) if mix_style > 0 else None
        self.freeze_statistics = freeze_statistics

    def train(self, mode: bool = True) -> ImageTail:
        super().train(mode)
        if self.freeze_statistics:  # BatchNorm normalises with its copied statistics and leaves them be
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, trunk: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's trunk map (ImageEncoder.trunk) -> pooled features [B, dim]."""
        for i, stage in enumerate(self.stages):
            if self.mix is not None and i < 2:
                trunk = self.mix(trunk)
            trunk = stage(trunk)
        return trunk.mean(dim=(2, 3))


class ImageEncoderOutputs(nn.Module):
    """The exported image encoder graph of a model with an ImageTail: one trunk pass, two outputs
    (the frozen embedding for the retrieval captioner, the tail's features for perception)."""

    def __init__(self, encoder: ImageEncoder, tail: ImageTail):
        super().__init__()
        self.encoder, self.tail = encoder, tail

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The tail's features only (training: the embedding is not needed)."""
        with torch.no_grad():  # the shared trunk is frozen
            trunk = self.encoder.trunk(pixels, self.tail.size)
        return self.tail(trunk)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trunk = self.encoder.trunk(pixels, self.tail.size)
        return self.encoder.embed_map(trunk, self.tail.size), self.tail(trunk)


class FaceEncoder(nn.Module):
    """The exported face encoder graph of a model with a face view: the same frozen trunk and trained
    tail over the face view. A graph of its own so that the runtime runs it beside the image encoder,
    the caption and the knowledge, which do not need it (perception does)."""

    def __init__(self, encoder: ImageEncoder, tail: ImageTail):
        super().__init__()
        self.encoder, self.tail = encoder, tail

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            trunk = self.encoder.trunk(face, self.tail.size)
        return self.tail(trunk)
