"""Pseudo-label selection (kcdp_core/train/pseudo_labels.py) and its use by the DA trainer."""

from __future__ import annotations

import csv
import json

import pytest
import torch


def _pred(labels, conf, head=None):
    from kcdp_core.train.pseudo_labels import TargetPredictions

    labels = torch.as_tensor(labels)
    head = labels.clone() if head is None else torch.as_tensor(head)
    return TargetPredictions(labels, torch.as_tensor(conf, dtype=torch.float), head)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 0.75, 1.0])
def test_class_fraction_keeps_the_most_confident_fraction_per_class(fraction) -> None:
    from kcdp_core.train.pseudo_labels import class_fraction

    g = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate((40, 7, 3, 1, 0, 12))])
    conf = torch.rand(len(labels), generator=g)
    keep = class_fraction(labels, conf, fraction)
    for c in torch.unique(labels).tolist():
        members = labels == c
        kept = keep & members
        assert int(kept.sum()) <= fraction * int(members.sum()) + 1e-9  # at most the asked fraction
        assert int(kept.sum()) == int(fraction * int(members.sum()) + 1e-9)
        if kept.any() and (members & ~keep).any():
            assert conf[kept].min() >= conf[members & ~keep].max()  # the most confident ones


def test_class_fraction_balances_an_over_predicted_class() -> None:
    from kcdp_core.train.pseudo_labels import select

    # 90 images labelled class 0 with high confidence, 10 labelled class 1 with low confidence:
    # a global top-50% would keep class 0 only; per class, both keep half.
    labels = [0] * 90 + [1] * 10
    conf = [0.9 + 0.001 * i for i in range(90)] + [0.3] * 10
    keep = select(_pred(labels, conf), "class_fraction", fraction=0.5)
    assert int(keep[:90].sum()) == 45 and int(keep[90:].sum()) == 5


def test_select_threshold_and_agreement() -> None:
    from kcdp_core.train.pseudo_labels import select

    pred = _pred([0, 1, 2, 2], [0.9, 0.4, 0.8, 0.95], head=[0, 1, 1, 2])
    assert select(pred, "all").tolist() == [True] * 4
    assert select(pred, "all", threshold=0.5).tolist() == [True, False, True, True]
    assert select(pred, "all", agreement=True).tolist() == [True, True, False, True]
    # The fraction is taken among what the other rules left: class 2 keeps its one agreed label.
    assert select(pred, "class_fraction", fraction=1.0, agreement=True).tolist() == [True, True, False, True]
    with pytest.raises(ValueError):
        select(pred, "top")


def test_fraction_schedule() -> None:
    from kcdp_core.train.pseudo_labels import fraction_at

    assert fraction_at(0, 10, 0.2, None) == 0.2
    assert fraction_at(0, 10, 0.2, 0.8) == pytest.approx(0.2)
    assert fraction_at(9, 10, 0.2, 0.8) == pytest.approx(0.8)
    assert fraction_at(3, 1, 0.2, 0.8) == 0.2


# -- the trainer -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def domains(tmp_path_factory, one_torch_thread):
    from train_data import make_domain

    root = tmp_path_factory.mktemp("pseudo")
    mp = pytest.MonkeyPatch()
    mp.setenv("KCDP_CACHE", str(root / "cache"))  # hermetic tiny foundation and knowledge caches
    src = make_domain(root / "src", (250, 200, 40), per_class=2, seed=0)
    tgt = make_domain(root / "tgt", (255, 255, 255), per_class=2, seed=1)
    yield root, src, tgt
    mp.undo()


def _manifest(folder, out, label):
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"] if label is not None else ["path"])
        for i, p in enumerate(sorted(folder.rglob("*.png"))):
            writer.writerow([str(p), label(i)] if label is not None else [str(p)])
    return out


def _train(config, source, target, out):
    from safetensors.torch import load_file

    from kcdp_core.train.trainer import Trainer

    Trainer(config, source, out, target=target, progress=False, log=lambda m: None).run()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return load_file(str(out / "model.safetensors")), [r for r in rows if r["kind"] == "pseudo_labels"]


def test_selection_trains_identically_whatever_the_target_label_column_holds(domains) -> None:
    """A target manifest whose label column is garbage (or absent) trains bit for bit the same."""
    from kcdp_core.config import tiny

    root, src, tgt = domains
    garbage = _manifest(
        tgt, root / "garbage.csv", lambda i: ["", "???", "not-a-class", str(i), "anger"][i % 5]
    )
    bare = _manifest(tgt, root / "bare.csv", None)
    config = tiny().replace(
        train={
            "setting": "da",
            "epochs": 2,
            "seed": 5,
            "pseudo_labels": "epoch",
            "pseudo_select": "class_fraction",
            "pseudo_fraction": 0.5,
            "pseudo_fraction_end": 1.0,
            "pseudo_agreement": True,
            "pseudo_warmup_epochs": 1,
            "target_bn": True,  # the target's statistics read its images only, too
        }
    )
    n = len(list(tgt.rglob("*.png")))
    a, logs_a = _train(config, src, garbage, root / "run_garbage")
    b, logs_b = _train(config, src, bare, root / "run_bare")
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert a[name].view(-1).view(dtype=torch.uint8).equal(b[name].view(-1).view(dtype=torch.uint8)), name
    assert logs_a == logs_b
    # AdaBN'd best/ (its marker makes a resume skip it), the same bytes from either manifest
    for run in ("run_garbage", "run_bare"):
        assert json.loads((root / run / "best" / "target_bn.json").read_text())["images"] == n
    best = [(root / run / "best" / "model.safetensors").read_bytes() for run in ("run_garbage", "run_bare")]
    assert best[0] == best[1]
    # Warm-up: no pseudo-labels in epoch 1; then one row per epoch over the whole target, in its order.
    assert [r["epoch"] for r in logs_a] == [2]
    for row in logs_a:
        assert len(row["cliea"]) == len(row["head"]) == len(row["keep"]) == len(row["confidence"]) == n
        keep = torch.tensor(row["keep"], dtype=torch.bool)
        cliea, head = torch.tensor(row["cliea"]), torch.tensor(row["head"])
        assert bool((cliea[keep] == head[keep]).all())  # agreement
        for c in torch.unique(cliea).tolist():  # at most the fraction of the epoch (0.5 then 1.0)
            assert int((keep & (cliea == c)).sum()) <= (0.5 if row["epoch"] == 2 else 1.0) * int(
                (cliea == c).sum()
            )


def test_zeroshot_labels_keep_to_the_declared_classes(domains) -> None:
    """The aligned encoder's zero-shot labels (computed once): with target_classes, only those classes,
    their confidence a softmax over them alone; without, any class."""
    from kcdp_core.config import tiny

    root, src, tgt = domains
    n = len(list(tgt.rglob("*.png")))
    train = {"setting": "da", "epochs": 2, "seed": 2, "pseudo_labels": "zeroshot"}
    _, free = _train(tiny().replace(train=train), src, tgt, root / "run_zeroshot")
    classes = ["anger", "sadness"]  # not the class the tiny classifier gives every image
    config = tiny().replace(train=train | {"target_classes": classes})
    _, kept = _train(config, src, tgt, root / "run_zeroshot_classes")
    allowed = {config.labels.index(c) for c in classes}
    assert [r["how"] for r in free] == [r["how"] for r in kept] == ["zeroshot", "zeroshot"]
    assert free[0]["cliea"] == free[1]["cliea"] and len(free[0]["cliea"]) == n  # computed once
    assert set(free[0]["cliea"]) - allowed  # left alone, it names another class
    for row in kept:
        assert set(row["cliea"]) <= allowed
        assert all(0.5 <= c <= 1.0 for c in row["confidence"])  # the larger of two probabilities


def test_batch_mode_logs_what_the_batches_used_and_refuses_selection(domains) -> None:
    from kcdp_core.config import tiny
    from kcdp_core.train.trainer import Trainer

    root, src, tgt = domains
    config = tiny().replace(train={"setting": "da", "epochs": 1, "seed": 1})
    _, logs = _train(config, src, tgt, root / "run_batch")
    assert len(logs) == 1 and logs[0]["how"] == "batch"
    used = [c for c in logs[0]["cliea"] if c >= 0]
    assert used and all(0 <= c < len(config.labels) for c in used)
    with pytest.raises(ValueError, match="epoch"):
        Trainer(config.replace(train={"pseudo_select": "class_fraction"}), src, root / "x", target=tgt)


def test_target_sampler_draws_from_the_selected_pool() -> None:
    from kcdp_core.train.trainer import CyclicBatchSampler

    sampler = CyclicBatchSampler(20, 4, 5, seed=0)
    full = list(sampler)
    sampler.set_pool([3, 7, 11])
    assert {i for batch in sampler for i in batch} == {3, 7, 11}
    assert all(len(b) == 4 for b in sampler) and len(list(sampler)) == 5
    sampler.set_pool(None)
    assert list(sampler) == full  # a function of (seed, epoch) and the pool only


def test_class_quota_caps_an_over_predicted_class_at_an_equal_share() -> None:
    from kcdp_core.train.pseudo_labels import select

    # 120 labels of class 0, 60 of class 1, 20 of class 2; fraction 0.3 of 200 over 3 classes = 20 each.
    labels = [0] * 120 + [1] * 60 + [2] * 20
    conf = [float(i % 17) / 17 for i in range(200)]
    fraction = select(_pred(labels, conf), "class_fraction", fraction=0.3)
    quota = select(_pred(labels, conf), "class_quota", fraction=0.3)
    counts = [int(quota[torch.tensor(labels) == c].sum()) for c in range(3)]
    assert counts == [20, 18, 6]  # min(equal share 20, 30% of the class)
    assert int(fraction[:120].sum()) == 36 and bool((quota & ~fraction).sum() == 0)


def test_declared_classes_mask_the_labels_the_target_lacks() -> None:
    from kcdp_core.train.pseudo_labels import absent_labels, declared

    labels = ("anger", "happiness", "sadness")
    assert absent_labels(labels, None) is None
    absent = absent_labels(labels, ("sadness", "happiness"))
    assert absent.tolist() == [True, False, False]
    scores = torch.tensor([[5.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    masked = declared(scores, absent)
    assert masked.argmax(-1).tolist() == [1, 2]  # anger, the first image's top score, is never chosen
    assert masked.softmax(-1)[:, 0].tolist() == [0.0, 0.0]
    assert torch.allclose(masked.softmax(-1)[:, 1:], scores[:, 1:].softmax(-1))
    with pytest.raises(ValueError, match="joy"):
        absent_labels(labels, ("joy",))
