"""benchmarks/accuracy.py pool_loo: leave one art family out of the whole pool of training styles.
A close-up style leaves with its base style, no image of the left-out family reaches the source,
every style is cut per class, procedural faces are source only, held-out styles appear nowhere."""

from __future__ import annotations

import argparse
import csv
import shutil
from collections import Counter
from pathlib import Path

import pytest
from accuracy_script import load_accuracy
from train_data import make_domain

from kcdp_core.data.avatar_build import build_avatars
from kcdp_core.data.avatar_key import HELDOUT_STYLES, load_training_styles
from kcdp_core.data.procedural_faces import build_procedural
from kcdp_core.train.default_model import OPEN_DOMAINS


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pool")
    for domain in (*OPEN_DOMAINS, "apple"):  # apple: a proprietary emoji style, never in the pool
        make_domain(root / "emoji" / "domains" / domain, (200, 180, 40), per_class=2)
    build_avatars(root / "avatars", per_class=3, size=32, workers=1, corpus_per_style=0)
    for style_set in ("extra", "labelled"):
        build_avatars(
            root / style_set, per_class=3, size=32, workers=1, corpus_per_style=0, style_set=style_set
        )
    build_procedural(root / "procedural", per_class=2, size=32)
    # a held-out style's images lying next to the labelled ones must never be read
    shutil.copytree(root / "labelled" / "domains" / "lorelei", root / "labelled" / "domains" / "toon-head")
    return root


def _args(root: Path, **changes) -> argparse.Namespace:
    args = argparse.Namespace(
        data=str(root / "emoji"), avatars=str(root / "avatars"), extra_avatars=str(root / "extra"),
        labelled_avatars=str(root / "labelled"), procedural=str(root / "procedural"), avatar_per_class=2,
        emoji_per_class=1, subset_seed=0, runs=str(root / "runs"), tasks=None, reference_size=64,
    )  # fmt: skip
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def _rows(manifest: Path) -> list[dict]:
    with manifest.open(newline="") as f:
        return list(csv.DictReader(f))


def test_every_family_with_a_labelled_style_is_a_task_and_its_close_up_leaves_with_it(pool) -> None:
    acc = load_accuracy()
    table = load_training_styles()
    tasks = acc.tasks_for("pool_loo", _args(pool))
    families = list(dict.fromkeys(row.family for row in table.values() if row.set == "labelled"))
    assert "avataaars" in families and "procedural" not in families
    # columns grouped by family: avataaars (benchmark) sits next to its close-up avataaars-neutral
    assert [t.key for t in tasks] == [s for f in families for s, row in table.items() if row.family == f]
    assert [t.key for t in tasks][-2:] == ["avataaars", "avataaars-neutral"]
    by_key = {t.key: t for t in tasks}
    # one source per family, shared by its styles: one training run scores both columns
    assert by_key["lorelei"].source == by_key["lorelei-neutral"].source
    assert by_key["avataaars"].source == by_key["avataaars-neutral"].source
    assert by_key["lorelei"].source != by_key["avataaars"].source
    assert by_key["avataaars"].eval_data == pool / "avatars" / "domains" / "avataaars"
    assert by_key["avataaars-neutral"].eval_data == pool / "labelled" / "domains" / "avataaars-neutral"
    assert all(t.truth_classes and t.target == t.eval_data for t in tasks)

    lorelei = acc.tasks_for("pool_loo", _args(pool, tasks=["family:lorelei"]))
    assert [t.key for t in lorelei] == ["lorelei", "lorelei-neutral"]
    for bad in ("family:procedural", "family:toon-head", "family:cameo", "loo:moods"):
        with pytest.raises(SystemExit):
            acc.tasks_for("pool_loo", _args(pool, tasks=[bad]))
    with pytest.raises(SystemExit, match="labelled-avatars"):
        acc.tasks_for("pool_loo", _args(pool, labelled_avatars=None))


def test_the_source_is_the_pool_less_the_family_cut_per_class_with_every_procedural_face(pool) -> None:
    acc = load_accuracy()
    table = load_training_styles()
    tasks = acc.tasks_for("pool_loo", _args(pool, tasks=["family:lorelei", "family:avataaars"]))
    avatar_styles = {s for s, row in table.items() if row.set in ("benchmark", "extra", "labelled")}
    for fam in ("lorelei", "avataaars"):
        (source,) = {t.source for t in tasks if table[t.key].family == fam}
        rows = _rows(source)
        left_out = {s for s in avatar_styles if table[s].family == fam}
        assert left_out == {fam, f"{fam}-neutral"}  # the close-up leaves with its base style
        assert {r["domain"] for r in rows} == set(OPEN_DOMAINS) | (avatar_styles - left_out) | {"procedural"}
        # no image of the left-out family, under any name; no held-out or proprietary style anywhere
        targets = {str(p.resolve()) for t in tasks if t.key in left_out for p in t.eval_data.rglob("*.png")}
        assert len(targets) == sum(3 * len(table[s].classes) for s in left_out)
        assert targets.isdisjoint(r["path"] for r in rows)
        assert not any(f"/{s}/" in r["path"] for s in (*left_out, *HELDOUT_STYLES, "apple") for r in rows)
        assert all(Path(r["path"]).parent.name == r["label"] for r in rows)
        counts = Counter((r["domain"], r["label"]) for r in rows)
        for (domain, label), n in counts.items():
            expected = 1 if domain in OPEN_DOMAINS else 2  # avatar styles: 2 of 3; procedural: all 2
            assert n == expected, (domain, label)
        for style in avatar_styles - left_out:  # every class a style has, cut to 2 of its 3 seeds
            assert {label for d, label in counts if d == style} == set(table[style].classes)
        assert sum(n for (d, _), n in counts.items() if d == "procedural") == 2 * 7


def test_the_draw_is_seeded_and_the_source_name_follows_its_contents(pool) -> None:
    acc = load_accuracy()
    first = acc.tasks_for("pool_loo", _args(pool, tasks=["family:dylan"]))[0].source
    again = acc.tasks_for("pool_loo", _args(pool, tasks=["family:dylan"]))[0].source
    assert first == again and _rows(first) == _rows(again)
    other_seed = acc.tasks_for("pool_loo", _args(pool, tasks=["family:dylan"], subset_seed=1))[0].source
    assert other_seed != first and _rows(other_seed) != _rows(first)
    # without --procedural: another source, so another run folder (never a stale reuse)
    bare = acc.tasks_for("pool_loo", _args(pool, tasks=["family:dylan"], procedural=None))[0].source
    assert bare != first
    assert {r["domain"] for r in _rows(bare)} == {r["domain"] for r in _rows(first)} - {"procedural"}
    # without --extra-avatars its styles leave the pool
    no_extra = acc.tasks_for("pool_loo", _args(pool, tasks=["family:dylan"], extra_avatars=None))[0].source
    extra = {s for s, row in load_training_styles().items() if row.set == "extra"}
    assert extra.isdisjoint(r["domain"] for r in _rows(no_extra))
