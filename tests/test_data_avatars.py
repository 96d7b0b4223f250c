"""kcdp-data avatars: labels follow the key, determinism, style lists, corpus captions, bad keys."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from kcdp_core.data.avatar_build import build_avatars, class_options, corpus_jobs
from kcdp_core.data.avatar_captions import EYES, MOUTHS
from kcdp_core.data.avatar_key import (
    AVATAR_HELDOUT_KEY_CSV,
    AVATAR_KEY_CSV,
    AVATAR_LABELLED_KEY_CSV,
    BENCHMARK_STYLES,
    CORPUS_EXPRESSION_STYLES,
    CORPUS_STYLES,
    EXTRA_STYLES,
    HELDOUT_STYLES,
    LABELLED_OPTIONS,
    LABELLED_STYLES,
    STYLE_SETS,
    TRAINING_STYLES_CSV,
    check_trainable,
    load_avatar_key,
    load_training_styles,
    style_credit,
)
from kcdp_core.data.cli import main as data_main
from kcdp_core.portable.labels import EMOJI7


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("avatars") / "a"
    res = build_avatars(out, per_class=3, size=48, workers=1, corpus_per_style=6)
    assert not res.errors
    return out


def _index(out: Path) -> list[dict]:
    with open(out / "index.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _digest(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "report.json"  # the report carries the build time
    }


def test_every_image_follows_its_class_in_the_key(built):
    key = load_avatar_key()
    rows = [r for r in _index(built) if r["part"] == "benchmark"]
    assert len(rows) == 3 * sum(len(k.labels) for k in key.values())
    for r in rows:
        drawn = json.loads(r["options"])
        for component, variants in key[r["style"]].classes[r["label"]].items():
            assert drawn[f"{component}Variant"] in variants, (r["path"], component)
        assert (built / r["path"]).parent.name == r["label"]
        assert r["license"] and r["creator"]
    # the face stays visible: no mask in open-peeps, no dark glasses in avataaars
    assert not any("maskVariant" in json.loads(r["options"]) for r in rows if r["style"] == "open-peeps")
    assert not any(
        json.loads(r["options"]).get("accessoriesVariant") in ("sunglasses", "wayfarers", "eyepatch")
        for r in rows
        if r["style"] == "avataaars"
    )


def test_classes_a_style_cannot_show_are_absent(built):
    key = load_avatar_key()
    for style in BENCHMARK_STYLES:
        folders = sorted(p.name for p in (built / "domains" / style).iterdir())
        assert folders == sorted(key[style].labels)
    assert "disgust" not in key["moods"].labels and "disgust" in key["avataaars"].labels


def test_only_benchmark_styles_in_the_benchmark_and_only_corpus_styles_in_the_corpus(built):
    assert sorted(p.name for p in (built / "domains").iterdir()) == sorted(BENCHMARK_STYLES)
    assert sorted(p.name for p in (built / "corpus").iterdir() if p.is_dir()) == sorted(CORPUS_STYLES)
    assert not set(BENCHMARK_STYLES) & set(CORPUS_STYLES)
    task = built / "tasks" / "leave_out_moods.csv"
    with open(task, newline="") as f:
        rows = list(csv.DictReader(f))  # path,label,domain; paths relative to the CSV's folder
    assert {r["domain"] for r in rows} == set(BENCHMARK_STYLES) - {"moods"}
    assert all((task.parent / r["path"]).exists() for r in rows)


def test_corpus_captions_name_the_parts_the_image_shows(built):
    options = {r["path"]: json.loads(r["options"]) for r in _index(built) if r["part"] == "corpus"}
    lines = [json.loads(ln) for ln in (built / "corpus" / "captions.jsonl").read_text().splitlines()]
    assert len(lines) == 6 * len(CORPUS_STYLES) and all(ln["face"] for ln in lines)
    named = 0
    for ln in lines:
        drawn = options[f"corpus/{ln['path']}"]
        assert (built / "corpus" / ln["path"]).is_file()
        if ln["domain"] in CORPUS_EXPRESSION_STYLES:
            for part, words in (("eyesVariant", EYES), ("mouthVariant", MOUTHS)):
                if drawn.get(part) in words:
                    assert words[drawn[part]] in ln["caption"], (ln, drawn)
                    named += 1
    assert named >= 2 * len(CORPUS_EXPRESSION_STYLES)


def test_two_builds_are_byte_identical_and_seed_start_gives_new_avatars(built, tmp_path):
    again = tmp_path / "b"
    build_avatars(again, per_class=3, size=48, workers=2, corpus_per_style=6)
    assert _digest(again) == _digest(built)
    fresh = tmp_path / "c"
    build_avatars(fresh, per_class=3, size=48, workers=1, corpus_per_style=0, seed_start=1000)
    old = {v for k, v in _digest(built).items() if k.startswith("domains/")}
    new = {v for k, v in _digest(fresh).items() if k.startswith("domains/")}
    assert len(new) > 0 and len(old & new) < 0.2 * len(new)  # a few simple faces may coincide


@pytest.mark.parametrize(
    "row, message",
    [
        ("nosuchstyle,anger,eyes,angry", "style 'nosuchstyle' is not one of"),
        ("moods,anger,nose,angry", "has no component 'nose'"),
        ("moods,anger,eyes,furious", "has no variant"),
        ("moods,rage,eyes,angry", "is not one of"),
    ],
)
def test_a_bad_key_row_stops_the_build_before_anything_is_written(tmp_path, row, message, capsys):
    bad = tmp_path / "key.csv"
    bad.write_text(AVATAR_KEY_CSV.read_text() + row + "\n")
    line = len(AVATAR_KEY_CSV.read_text().splitlines()) + 1
    with pytest.raises(ValueError, match=message) as err:
        build_avatars(tmp_path / "out", per_class=1, key_path=bad)
    assert f"key.csv:{line}" in str(err.value)
    assert not (tmp_path / "out").exists()
    assert data_main(["avatars", "--out", str(tmp_path / "out"), "--key", str(bad)]) == 2
    assert f"key.csv:{line}" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("style_set, per_class", [("extra", 2), ("heldout", 2), ("labelled", 1)])
def test_other_sets_render_every_class_of_their_styles_by_their_own_key(tmp_path, style_set, per_class):
    styles, key_csv = STYLE_SETS[style_set]
    out = tmp_path / style_set
    argv = ["avatars", "--out", str(out), "--styles", style_set, "--per-class", str(per_class), "--size", "48"]
    assert data_main(argv) == 0
    key = load_avatar_key(key_csv, styles)
    rows = _index(out)
    assert {r["style"] for r in rows} == set(styles) and {r["part"] for r in rows} == {"benchmark"}
    assert len(rows) == per_class * sum(len(k.labels) for k in key.values())
    for style in styles:  # every class the key lists for a style has its images
        assert sorted(p.name for p in (out / "domains" / style).iterdir()) == sorted(key[style].labels)
    for r in rows:
        drawn = json.loads(r["options"])
        for component, variants in key[r["style"]].classes[r["label"]].items():
            assert drawn[f"{component}Variant"] in variants, (r["path"], component)
    assert sorted(p.name for p in (out / "domains").iterdir()) == sorted(styles)
    assert not (out / "tasks").exists() and not (out / "corpus").exists()  # scored or added, never a task


def test_the_style_lists_keep_held_out_styles_out_of_everything_trained():
    assert set(EXTRA_STYLES) <= set(CORPUS_EXPRESSION_STYLES)
    assert not set(HELDOUT_STYLES) & (set(BENCHMARK_STYLES) | set(CORPUS_STYLES))
    trained = set(load_training_styles())
    for name, (styles, key_csv) in STYLE_SETS.items():
        if name != "heldout":
            assert set(styles) <= trained, name  # every labelled set that may train is on the list
            assert not set(styles) & set(HELDOUT_STYLES), name
            assert not set(load_avatar_key(key_csv, styles)) & set(HELDOUT_STYLES)
    assert set(CORPUS_STYLES) <= trained and not trained & set(HELDOUT_STYLES)
    assert not trained & set(LABELLED_OPTIONS) - set(LABELLED_STYLES)  # options only for labelled renders
    for style in HELDOUT_STYLES + ("thumbs", "miniavs", "initial-face"):
        with pytest.raises(ValueError, match="not on the list of training styles"):
            check_trainable(("moods", style))
    check_trainable(BENCHMARK_STYLES + EXTRA_STYLES + LABELLED_STYLES + ("procedural",))


def test_the_list_of_training_styles_matches_the_keys_and_the_style_definitions():
    listed = load_training_styles()
    keyed = {}
    for name, (styles, key_csv) in STYLE_SETS.items():
        if name != "heldout":
            keyed.update({s: (name, k.labels) for s, k in load_avatar_key(key_csv, styles).items()})
    for style, row in listed.items():
        assert row.family in listed, style  # a close-up's base style is a training style too
        if row.set == "procedural":
            assert row.classes == EMOJI7
            continue
        assert row.license == style_credit(style)[1], style  # the licence as the style's definition says
        if row.set == "corpus":
            assert style in CORPUS_STYLES and not row.classes and style not in keyed
        else:
            assert (row.set, row.classes) == keyed[style], style
    assert set(keyed) <= set(listed)
    assert listed["avataaars-neutral"].family == "avataaars" and listed["croodles"].family == "croodles"


def test_a_held_out_style_on_the_training_list_is_refused_with_file_and_row(tmp_path):
    bad = tmp_path / "training_styles.csv"
    bad.write_text(TRAINING_STYLES_CSV.read_text() + "micah,labelled,micah,happiness,CC BY 4.0,dicebear-styles\n")
    line = len(TRAINING_STYLES_CSV.read_text().splitlines()) + 1
    with pytest.raises(ValueError, match=f"training_styles.csv:{line} .*micah is held out"):
        load_training_styles(bad)
    twice = tmp_path / "twice.csv"
    twice.write_text(TRAINING_STYLES_CSV.read_text() + "moods,benchmark,moods,anger,CC0 1.0,dicebear-styles\n")
    with pytest.raises(ValueError, match="moods is listed twice"):
        load_training_styles(twice)


@pytest.mark.parametrize(
    "row, message",
    [
        ("croodles,anger,eyes,variant99", r"croodles.eyes has no variant\(s\) \['variant99'\]"),
        ("dylan,anger,mouth,angry", "dylan has no component 'mouth'"),
        ("toon-head,anger,eyes,wide", "style 'toon-head' is not one of"),
        ("thumbs,happiness,eyes,variant01", "style 'thumbs' is not one of"),
    ],
)
def test_a_bad_labelled_key_row_names_the_file_and_row(tmp_path, row, message):
    bad = tmp_path / "labelled.csv"
    bad.write_text(AVATAR_LABELLED_KEY_CSV.read_text() + row + "\n")
    line = len(AVATAR_LABELLED_KEY_CSV.read_text().splitlines()) + 1
    with pytest.raises(ValueError, match=message) as err:
        build_avatars(tmp_path / "out", per_class=1, key_path=bad, corpus_per_style=0, style_set="labelled")
    assert f"labelled.csv:{line}" in str(err.value) and not (tmp_path / "out").exists()


def test_labelled_renders_get_their_options_and_every_other_render_keeps_its_own():
    key = load_avatar_key(AVATAR_LABELLED_KEY_CSV, LABELLED_STYLES)
    opts = class_options("adventurer", key["adventurer"].classes["anger"])
    assert opts["glassesProbability"] == 0 and all(h.startswith("short") for h in opts["hairVariant"])
    assert opts["eyebrowsVariant"] == ["variant01", "variant02"]
    # the corpus renders of the same style keep FACE_VISIBLE alone (their images stay byte-identical)
    corpus = [j for j in corpus_jobs(1, 0) if j.style == "adventurer"]
    assert corpus and "glassesProbability" not in corpus[0].options
    bench = load_avatar_key()
    assert class_options("moods", bench["moods"].classes["anger"]) == {
        "animationVariant": ["none"],
        "eyesVariant": ["angry"],
        "eyesProbability": 100,
        "mouthVariant": ["line", "frown", "wavy"],
        "mouthProbability": 100,
    }


def test_a_benchmark_style_in_the_held_out_key_and_a_corpus_for_held_out_styles_are_refused(tmp_path):
    bad = tmp_path / "key.csv"
    bad.write_text(AVATAR_HELDOUT_KEY_CSV.read_text() + "moods,anger,eyes,angry\n")
    with pytest.raises(ValueError, match="style 'moods' is not one of"):
        load_avatar_key(bad, HELDOUT_STYLES)
    with pytest.raises(ValueError, match="no corpus"):
        build_avatars(tmp_path / "out", per_class=1, corpus_per_style=5, style_set="heldout")
    assert not (tmp_path / "out").exists()


def test_class_options_force_and_show_every_listed_component():
    key = load_avatar_key()
    opts = class_options("avataaars", key["avataaars"].classes["anger"])
    assert opts["eyebrowsVariant"] == ["angry", "angryNatural"] and opts["eyebrowsProbability"] == 100
    assert opts["mouthVariant"] == ["serious", "grimace"] and opts["mouthProbability"] == 100
