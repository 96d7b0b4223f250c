"""MixStyle: in training it swaps in mixed feature statistics and keeps the normalised content; in
evaluation (and so in every export) it is the identity."""

from __future__ import annotations

import torch

from kcdp_core.model.mixstyle import MixStyle


def _styled(batch: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    content = torch.randn(batch, 8, 5, 5, generator=g)
    scale = torch.arange(1, batch + 1, dtype=torch.float32).view(batch, 1, 1, 1)
    return content * scale + 10 * torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1)


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True)


def test_training_mixes_the_statistics_and_keeps_the_content() -> None:
    x = _styled()
    torch.manual_seed(1)
    y = MixStyle(p=1.0).train()(x)
    torch.testing.assert_close(_normalised(y), _normalised(x), atol=1e-4, rtol=1e-4)
    mean_x, mean_y = x.mean((2, 3)), y.mean((2, 3))
    assert not torch.allclose(mean_y, mean_x, atol=1e-3)  # some image took on another's statistics
    # each mixed mean lies between the image's own and the batch's extremes (a convex mix of two)
    assert bool(((mean_y >= mean_x.min() - 1e-4) & (mean_y <= mean_x.max() + 1e-4)).all())


def test_identity_in_eval_with_p_zero_and_for_one_image() -> None:
    x = _styled()
    assert torch.equal(MixStyle(p=1.0).eval()(x), x)
    assert torch.equal(MixStyle(p=0.0).train()(x), x)
    assert torch.equal(MixStyle(p=1.0).train()(x[:1]), x[:1])


def test_the_cli_option_puts_mixstyle_in_the_tail_and_the_checkpoint_keeps_no_state(tmp_path) -> None:
    from kcdp_core.config import KCDPConfig, mini
    from kcdp_core.model.image_encoder import ImageEncoder, ImageEncoderConfig
    from kcdp_core.model.image_tail import ImageTail
    from kcdp_core.train.cli import _config_from_args, train_parser

    args = train_parser().parse_args(
        ["--preset", "mini", "--source", "s", "--out", "o", "--mix-style", "0.5"]
    )
    config = _config_from_args(args)
    assert config.perception.mix_style == 0.5 and mini().perception.mix_style == 0.0
    config.save(tmp_path)
    assert KCDPConfig.load(tmp_path).perception.mix_style == 0.5

    encoder = ImageEncoder(ImageEncoderConfig(backbone="tiny_cnn"))
    plain, mixed = ImageTail(encoder, 1), ImageTail(encoder, 1, mix_style=0.5)
    assert mixed.mix is not None and plain.mix is None
    assert mixed.state_dict().keys() == plain.state_dict().keys()  # nothing to save: checkpoints unchanged
