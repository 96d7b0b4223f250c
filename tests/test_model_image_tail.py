"""The image tail: a trainable copy of the image encoder's last stages."""

from __future__ import annotations

import torch


def test_a_tail_with_frozen_statistics_trains_its_batchnorm_weights_but_keeps_its_statistics() -> None:
    from kcdp_core.model.image_encoder import ImageEncoder, ImageEncoderConfig
    from kcdp_core.model.image_tail import ImageTail

    encoder = ImageEncoder(ImageEncoderConfig())  # EfficientNet-Lite0 (random weights): BatchNorm stages
    with torch.no_grad():
        trunk = encoder.trunk(torch.rand(4, 3, 64, 64), 2)
    for frozen in (False, True):
        tail = ImageTail(encoder, 2, freeze_statistics=frozen).train()
        norms = [m for m in tail.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        before = [m.running_mean.clone() for m in norms]
        tail(trunk).sum().backward()
        moved = any(not m.running_mean.equal(b) for m, b in zip(norms, before, strict=True))
        assert norms and moved is not frozen
        assert all(m.weight.grad is not None for m in norms)  # the affine weights still train
        assert tail.training and all(m.training is not frozen for m in norms)
