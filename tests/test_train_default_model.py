"""The default model's training data: open emoji styles, the lowest avatar seeds per class of the
benchmark styles and (optionally) of the extra labelled styles; never a held-out style."""

from __future__ import annotations

import csv
from pathlib import Path

from train_data import make_domain

from kcdp_core.data.avatar_build import build_avatars
from kcdp_core.data.avatar_key import (
    AVATAR_EXTRA_KEY_CSV,
    BENCHMARK_STYLES,
    EXTRA_STYLES,
    HELDOUT_STYLES,
    LABELLED_STYLES,
    load_avatar_key,
    load_training_styles,
)
from kcdp_core.data.procedural_faces import build_procedural
from kcdp_core.train.default_model import OPEN_DOMAINS, _avatar_rows, kept_styles, open_manifest


def test_the_training_data_takes_the_lowest_seeds_of_every_labelled_style_and_no_held_out_one(tmp_path):
    for domain in OPEN_DOMAINS:
        make_domain(tmp_path / "emoji" / "domains" / domain, (200, 180, 40), per_class=1)
    build_avatars(tmp_path / "avatars", per_class=3, size=32, workers=1, corpus_per_style=0)
    build_avatars(tmp_path / "extra", per_class=3, size=32, workers=1, corpus_per_style=0, style_set="extra")

    manifest, counts = open_manifest(
        tmp_path / "emoji", tmp_path / "m.csv", tmp_path / "avatars", 2, tmp_path / "extra"
    )
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    extra_key = load_avatar_key(AVATAR_EXTRA_KEY_CSV, EXTRA_STYLES)
    assert all(counts[d] == 7 for d in OPEN_DOMAINS)
    assert all(counts[s] == 2 * len(extra_key[s].labels) for s in EXTRA_STYLES)
    assert set(counts) == set(OPEN_DOMAINS) | set(BENCHMARK_STYLES) | set(EXTRA_STYLES)
    avatars = [Path(r["path"]) for r in rows if "avatars" in r["path"] or "extra" in r["path"]]
    assert {int(p.stem.rsplit("-", 1)[1]) for p in avatars} == {0, 1}  # seed 2 stays unseen
    assert all(Path(r["path"]).parent.name == r["label"] for r in rows)
    assert not any(style in r["path"] for r in rows for style in HELDOUT_STYLES)
    assert len(rows) == sum(counts.values())


def test_left_out_families_leave_with_their_close_ups_and_procedural_faces_join(tmp_path):
    for domain in OPEN_DOMAINS:
        make_domain(tmp_path / "emoji" / "domains" / domain, (200, 180, 40), per_class=1)
    build_avatars(
        tmp_path / "labelled", per_class=3, size=32, workers=1, corpus_per_style=0, style_set="labelled"
    )
    build_procedural(tmp_path / "procedural", per_class=2, size=32)

    manifest, counts = open_manifest(
        tmp_path / "emoji",
        tmp_path / "m.csv",
        labelled_avatars=tmp_path / "labelled",
        procedural=tmp_path / "procedural",
        leave_out_families=("lorelei", "avataaars"),
        labelled_per_class=2,
    )
    trained = set(counts) - set(OPEN_DOMAINS)
    assert {"lorelei", "lorelei-neutral", "avataaars-neutral"}.isdisjoint(trained)
    assert trained == (set(LABELLED_STYLES) - {"lorelei", "lorelei-neutral", "avataaars-neutral"}) | {
        "procedural"
    }
    assert counts["procedural"] == 2 * 7
    assert counts["dylan"] == 2 * len(load_training_styles()["dylan"].classes)
    rows = list(csv.DictReader(manifest.open(newline="")))
    labelled = [Path(r["path"]) for r in rows if "labelled" in r["path"]]
    assert {int(p.stem.rsplit("-", 1)[1]) for p in labelled} == {0, 1}  # seed 2 stays unseen
    assert kept_styles(("lorelei-neutral", "dylan"), ["lorelei"]) == ("dylan",)
    # the card scores the seeds above the trained ones, and only those
    unseen = _avatar_rows(tmp_path / "labelled", ("dylan",), 2, unseen=True)["dylan"]
    assert {int(p.stem.rsplit("-", 1)[1]) for p in unseen} == {2} and len(unseen) == counts["dylan"] // 2


def test_the_no_knowledge_row_trains_the_head_on_v_alone_and_changes_nothing_else():
    from kcdp_core.train.default_model import recipe_config, recipe_parser

    plain = recipe_config(recipe_parser().parse_args([]))
    bare = recipe_config(recipe_parser().parse_args(["--no-knowledge"]))
    assert (plain.knowledge.use_caption, plain.knowledge.use_triplets, plain.head.use_knowledge) == (
        True,
    ) * 3
    assert (bare.knowledge.use_caption, bare.knowledge.use_triplets, bare.head.use_knowledge) == (False,) * 3
    assert (
        bare.replace(knowledge={"use_caption": True, "use_triplets": True}, head={"use_knowledge": True})
        == plain
    )
