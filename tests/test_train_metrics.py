"""kcdp-eval's metrics on constructed cases, exactly; record loading and the validation split."""

from __future__ import annotations

import numpy as np
import pytest

from kcdp_core.train.datasets import UNLABELLED, load_records, split_validation
from kcdp_core.train.evaluate import classification_metrics

LABELS = ("anger", "happiness", "sadness", "surprise")


def test_metrics_constructed_case_exact() -> None:
    y_true = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 1, 1, 2, 2, 0, 0]
    m = classification_metrics(y_true, y_pred, LABELS)
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(6 / 10, abs=1e-12)
    # per class: anger tp2 fn1 fp2 -> F1 4/7; happiness tp3 fn1 fp1 -> 6/8; sadness tp1 fn2 fp1 -> 2/5
    assert m["per_class_f1"] == pytest.approx({"anger": 4 / 7, "happiness": 0.75, "sadness": 0.4}, abs=1e-12)
    assert m["macro_f1"] == pytest.approx(
        (4 / 7 + 0.75 + 0.4) / 3, abs=1e-12
    )  # surprise absent: not averaged
    assert m["per_class_recall"] == {"anger": 2 / 3, "happiness": 0.75, "sadness": 1 / 3, "surprise": None}
    assert m["confusion"] == [[2, 1, 0, 0], [0, 3, 1, 0], [2, 0, 1, 0], [0, 0, 0, 0]]


def test_metrics_agree_with_scikit_learn() -> None:
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 3, 200))  # class 3 never predicted
    m = classification_metrics(y_true, y_pred, LABELS)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12
    )
    recall = recall_score(y_true, y_pred, average=None, labels=[0, 1, 2, 3], zero_division=0)
    assert [m["per_class_recall"][name] for name in LABELS] == pytest.approx(list(recall), abs=1e-12)


def test_macro_f1_over_the_truths_classes_leaves_out_a_class_only_predicted() -> None:
    y_true = [1, 1, 2, 2]  # a style with two of the classes
    y_pred = [1, 0, 2, 2]  # one image called anger, a class the style does not have
    m = classification_metrics(y_true, y_pred, LABELS)
    happiness, sadness = 2 * 1 / (2 + 1), 1.0
    assert m["macro_f1_truth"] == pytest.approx((happiness + sadness) / 2, abs=1e-12)
    assert m["macro_f1"] == pytest.approx((0.0 + happiness + sadness) / 3, abs=1e-12)


def test_metrics_refuse_unlabelled() -> None:
    with pytest.raises(ValueError, match="unlabelled"):
        classification_metrics([0, UNLABELLED], [0, 1], LABELS)


def test_unlabelled_records_never_parse_labels(tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    manifest = tmp_path / "m.csv"
    # Labels outside the label set: fatal when read, invisible when not.
    manifest.write_text("path,label\na.png,not-a-label\nb.png,\n")
    records = load_records(manifest, LABELS, with_labels=False)
    assert [r.path.name for r in records] == ["a.png", "b.png"]
    assert {r.label for r in records} == {UNLABELLED}
    with pytest.raises(ValueError, match="row 1: label 'not-a-label'"):
        load_records(manifest, LABELS, with_labels=True)
    folder = tmp_path / "dom"
    for label in ("anger", "happiness"):
        (folder / label).mkdir(parents=True)
        (folder / label / f"{label}.png").write_bytes(b"x")
    assert {r.label for r in load_records(folder, LABELS, with_labels=False)} == {UNLABELLED}
    assert [r.label for r in load_records(folder, LABELS)] == [0, 1]


def test_validation_split_is_stratified_and_seeded() -> None:
    from kcdp_core.train.datasets import Record

    records = [Record(f"{i}.png", label) for i, label in enumerate([0] * 20 + [1] * 10 + [2] * 3)]  # type: ignore[arg-type]
    train, val = split_validation(records, 0.2, seed=1)
    assert sorted(train + val) == list(range(33)) and not set(train) & set(val)
    assert [sum(records[i].label == c for i in val) for c in range(3)] == [4, 2, 1]
    assert split_validation(records, 0.2, seed=1) == (train, val)
    assert split_validation(records, 0.2, seed=2) != (train, val)
