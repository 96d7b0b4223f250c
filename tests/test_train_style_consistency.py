"""Style consistency: each source image beside itself redrawn in another style, the first view's answer
the soft target of the second (train.style_consistency_weight)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from safetensors.torch import load_file
from train_data import make_domain


def test_the_second_view_is_redrawn_and_the_first_is_the_plain_augmentation(tmp_path) -> None:
    from kcdp_core.config import EMOJI7
    from kcdp_core.train.datasets import AugmentConfig, ImageKnowledgeDataset, load_records
    from kcdp_core.train.trainer import TwoViews

    src = make_domain(tmp_path / "src", (250, 200, 40), per_class=1, seed=0)
    records = load_records(src, EMOJI7)
    n, aug = len(records), AugmentConfig()
    ds = ImageKnowledgeDataset(records, np.zeros((n, 2, 4)), np.ones((n, 2)), 32, aug, seed=0, face_view=16)
    two = TwoViews(ds, dataclasses.replace(aug, style=1.0))
    item, plain = two[0], ds[0]
    assert item["pixels"].equal(plain["pixels"]) and item["face"].equal(plain["face"])
    assert item["pixels2"].shape == plain["pixels"].shape and item["face2"].shape == plain["face"].shape
    # the second view is the same stream's augmentation with the image redrawn first: not the plain one
    same_stream = ds.views(0, stream=(2,))
    assert not item["pixels2"].equal(same_stream["pixels"])
    assert two[0]["pixels2"].equal(item["pixels2"])  # a pure function of (seed, epoch, index)


def test_style_consistency_is_logged_and_changes_what_is_trained(
    tmp_path, monkeypatch, one_torch_thread
) -> None:
    from kcdp_core.config import tiny
    from kcdp_core.train.trainer import Trainer

    monkeypatch.setenv("KCDP_CACHE", str(tmp_path / "cache"))
    src = make_domain(tmp_path / "src", (250, 200, 40), per_class=2, seed=0)
    config = tiny().replace(train={"setting": "uc", "epochs": 1, "seed": 0, "batch_size": 4})
    with pytest.raises(ValueError, match="needs augment"):
        Trainer(
            config.replace(train={"style_consistency_weight": 1.0, "augment": False}),
            src,
            tmp_path / "bad",
        )
    runs = {}
    for name, weight in (("plain", 0.0), ("styled", 1.0)):
        out = tmp_path / name
        cfg = config.replace(train={"style_consistency_weight": weight})
        Trainer(cfg, src, out, progress=False, log=lambda m: None).run()
        runs[name] = load_file(str(out / "model.safetensors"))
    rows = [json.loads(x) for x in (tmp_path / "styled" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert steps and all(r["style_consistency"] > 0 for r in steps)
    # the term is in the loss, at its weight beside the others
    tc = config.train
    for r in steps:
        others = tc.lambda1 * r["ce_s"] + r.get("ccl", 0.0) + tc.balance_weight * r["balance"]
        assert r["loss"] == pytest.approx(others + 1.0 * r["style_consistency"], abs=1e-4)
    plain_rows = (tmp_path / "plain" / "metrics.jsonl").read_text()
    assert "style_consistency" not in plain_rows
    assert any(not runs["plain"][k].equal(runs["styled"][k]) for k in runs["plain"])
