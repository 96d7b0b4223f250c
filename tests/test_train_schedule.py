"""The learning-rate schedule: warm-up and cosine decay, and the pretrained weights held first (LP-FT)."""

from __future__ import annotations

import json

import pytest
from train_data import make_domain


def test_lr_lambda_holds_then_warms_up_and_decays() -> None:
    from kcdp_core.train.trainer import lr_lambda

    plain, held = lr_lambda(2, 10), lr_lambda(2, 10, hold=4)
    assert [round(plain(s), 3) for s in (0, 1, 2, 10)] == [0.5, 1.0, 1.0, 0.0]
    assert [held(s) for s in range(4)] == [0.0] * 4
    # after the hold, the same shape over the steps that are left
    assert [round(held(s), 3) for s in (4, 5, 6)] == [0.5, 1.0, 1.0] and held(10) == 0.0
    assert held(7) < held(6)


def test_held_pretrained_weights_train_only_after_the_hold(tmp_path, monkeypatch, one_torch_thread) -> None:
    from kcdp_core.config import tiny
    from kcdp_core.model.image_tail import ImageTail
    from kcdp_core.model.kcdp import KCDPModel
    from kcdp_core.train.trainer import Trainer

    monkeypatch.setenv("KCDP_CACHE", str(tmp_path / "cache"))
    src = make_domain(tmp_path / "src", (250, 200, 40), per_class=2, seed=0)
    config = tiny().replace(
        perception={"image_tail": 1}, train={"setting": "uc", "epochs": 2, "seed": 0, "batch_size": 4, "pretrained_hold_epochs": 1}
    )  # fmt: skip
    with pytest.raises(ValueError, match="pretrained_hold_epochs = 2"):
        Trainer(
            config.replace(train={"pretrained_hold_epochs": 2}), src, tmp_path / "bad", progress=False
        ).run()
    out = tmp_path / "run"
    Trainer(config, src, out, progress=False, log=lambda m: None).run()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # each step logs the first group's (the pretrained one's) rate for the step after it
    lr = [r["lr"] for r in rows if r["kind"] == "step"]
    first_epoch = sum(1 for r in rows if r["kind"] == "step" and r["epoch"] == 1)
    assert 1 < first_epoch < len(lr)
    assert all(x == 0.0 for x in lr[: first_epoch - 1]) and lr[first_epoch - 1] > 0
    # trained after the hold: the image tail no longer equals the stages it was copied from
    model = KCDPModel.from_pretrained(out)  # the last epoch
    start = ImageTail(model.image_encoder, 1).state_dict()
    assert any(
        not v.equal(start[k]) for k, v in model.image_tail.state_dict().items() if v.is_floating_point()
    )
