"""Balanced source batches (kcdp_core/train/trainer.py BalancedSampler, train.balanced_sampling and
train.balance_styles): every class, style, or (style, class) drawn about equally often, deterministic in
(seed, epoch); a style is the folder above an image's class folder."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from kcdp_core.config import tiny
from kcdp_core.train.datasets import Record
from kcdp_core.train.trainer import BalancedSampler, balance_keys, style_of


def records() -> list[Record]:
    """A skewed pool: style "big" 300 images (250 of class 0), style "small" 20 (class 1), and
    procedural faces written straight into class folders (procedural/<class>/)."""
    big = [Record(Path(f"data/domains/big/{c}/{i}.png"), c) for c, n in ((0, 250), (1, 50)) for i in range(n)]
    small = [Record(Path(f"data/domains/small/1/{i}.png"), 1) for i in range(20)]
    procedural = [Record(Path(f"procedural/{c}/{i}.png"), c) for c in (0, 1) for i in range(30)]
    return big + small + procedural


def draws(keys: list, seed: int = 0, epoch: int = 0, rounds: int = 20) -> list[int]:
    sampler = BalancedSampler(keys, seed)
    out = []
    for r in range(rounds):
        sampler.set_epoch(epoch + r)
        out += list(sampler)
    return out


def test_the_style_is_the_folder_above_the_class_folder():
    pool = records()
    assert {style_of(r) for r in pool} == {"big", "small", "procedural"}


def test_style_balancing_draws_every_style_about_equally_often():
    pool = records()
    keys = balance_keys(pool, tiny().replace(train={"balance_styles": True}).train)
    counts = Counter(style_of(pool[i]) for i in draws(keys))
    total = sum(counts.values())
    for style in ("big", "small", "procedural"):
        assert abs(counts[style] / total - 1 / 3) < 0.03, counts  # unbalanced: 300 / 380 are "big"


def test_style_and_class_balancing_draws_every_pair_about_equally_often():
    pool = records()
    train = tiny().replace(train={"balance_styles": True, "balanced_sampling": True}).train
    counts = Counter((style_of(pool[i]), pool[i].label) for i in draws(balance_keys(pool, train)))
    assert set(counts) == {("big", 0), ("big", 1), ("small", 1), ("procedural", 0), ("procedural", 1)}
    total = sum(counts.values())
    assert all(abs(n / total - 1 / 5) < 0.03 for n in counts.values()), counts


def test_class_balancing_alone_keys_by_label_and_draws_are_a_function_of_seed_and_epoch():
    pool = records()
    keys = balance_keys(pool, tiny().replace(train={"balanced_sampling": True}).train)
    assert keys == [r.label for r in pool]
    assert draws(keys, seed=1, rounds=1) == draws(keys, seed=1, rounds=1)
    assert draws(keys, seed=1, rounds=1) != draws(keys, seed=2, rounds=1)
    assert draws(keys, epoch=0, rounds=1) != draws(keys, epoch=1, rounds=1)
