"""AdaBN: BatchNorm statistics recomputed on one domain's images."""

from __future__ import annotations

import torch
from torch import nn

from kcdp_core.train.target_bn import recompute_statistics


class Probe(nn.Module):
    """pixels -> BatchNorm over the mean colour; k and k_mask ignored (the KCDP call signature)."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3)
        self.dropout = nn.Dropout(0.5)

    def forward(self, pixels, k, k_mask, face=None):
        return self.dropout(self.bn(pixels.mean(dim=(2, 3))))


def _batches(shift: float, n: int = 4, size: int = 8, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "pixels": torch.rand(size, 3, 4, 4, generator=g) + shift,
            "k": torch.zeros(size, 2, 5),
            "k_mask": torch.ones(size, 2),
        }
        for _ in range(n)
    ] + [{"pixels": torch.rand(1, 3, 4, 4) + 100.0, "k": torch.zeros(1, 2, 5), "k_mask": torch.ones(1, 2)}]


def test_recompute_takes_the_domains_mean_and_skips_single_images() -> None:
    model = Probe().train()
    model.bn.momentum = 0.05
    batches = _batches(shift=2.0)
    seen = recompute_statistics(model, batches)
    assert seen == 32  # the lone last image (an outlier at +100) is not counted
    colour = torch.cat([b["pixels"].mean(dim=(2, 3)) for b in batches[:-1]])
    torch.testing.assert_close(model.bn.running_mean, colour.mean(0), atol=1e-5, rtol=0)
    per_batch_var = torch.stack([c.var(0) for c in colour.split(8)]).mean(0)
    torch.testing.assert_close(model.bn.running_var, per_batch_var, atol=1e-5, rtol=0)
    assert model.training and model.bn.momentum == 0.05  # mode and EMA restored


def test_recompute_without_a_usable_batch_keeps_the_statistics() -> None:
    model = Probe()
    recompute_statistics(model, _batches(shift=2.0))
    mean, var = model.bn.running_mean.clone(), model.bn.running_var.clone()
    assert recompute_statistics(model, _batches(shift=50.0, n=0)) == 0  # a lone image only
    assert torch.equal(model.bn.running_mean, mean) and torch.equal(model.bn.running_var, var)


def test_recompute_within_leaves_other_layers_statistics_alone() -> None:
    """Only the layers a checkpoint keeps are adapted; a frozen upstream BatchNorm keeps its own."""
    model = nn.Sequential()
    model.frozen, model.kept = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    model.forward = lambda pixels, k, k_mask, face=None: model.kept(model.frozen(pixels.mean(dim=(2, 3))))
    batches = _batches(shift=3.0, seed=4)
    seen = recompute_statistics(model, batches, within=[model.kept])
    assert seen == 32
    torch.testing.assert_close(model.frozen.running_mean, torch.zeros(3))  # untouched
    colour = torch.cat([b["pixels"].mean(dim=(2, 3)) for b in batches[:-1]])
    # the kept layer saw the frozen layer's eval output: colour normalised by mean 0, var 1 (eps aside)
    torch.testing.assert_close(model.kept.running_mean, colour.mean(0), atol=1e-4, rtol=0)


def test_mini_adapts_by_default_and_the_cli_switches_it_either_way() -> None:
    from kcdp_core.train.cli import _config_from_args, train_parser

    def target_bn(*flags: str) -> bool:
        args = train_parser().parse_args(["--source", "s", "--out", "o", "--setting", "da", *flags])
        return _config_from_args(args).train.target_bn

    assert target_bn("--preset", "mini") is True  # the recipe chosen on the validation tasks
    assert target_bn("--preset", "mini", "--no-target-bn") is False
    assert target_bn("--preset", "tiny", "--foundation", "f") is False
    assert target_bn("--preset", "tiny", "--foundation", "f", "--target-bn") is True
