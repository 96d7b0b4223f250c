"""The project's label key: 44 emojis, 7 classes, disjoint from the excluded faces."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from kcdp_core.data.emoji_catalog import norm_hex, slug
from kcdp_core.data.emoji_key import LABEL_KEY_CSV, load_label_key
from kcdp_core.data.emoji_sources import DOMAINS, FAMILIES
from kcdp_core.data.packages import PACKAGES
from kcdp_core.portable.labels import EMOJI7


def test_key_has_44_emojis_in_7_classes():
    key = load_label_key()
    assert len(key) == 44 and len({e.key for e in key}) == 44
    counts = Counter(e.label for e in key)
    assert set(counts) == set(EMOJI7)
    assert counts == {
        "happiness": 19,
        "sadness": 7,
        "anger": 5,
        "fear": 4,
        "surprise": 4,
        "disgust": 2,
        "neutral": 3,
    }
    assert {e.unified for e in key} >= {"1F600", "263A-FE0F", "1F922", "1F92E", "1F610"}


def test_excluded_faces_are_disjoint_from_the_key_and_have_reasons():
    with open(LABEL_KEY_CSV.with_name("emoji_excluded.csv"), newline="", encoding="utf-8") as f:
        excluded = list(csv.DictReader(f))
    assert len(excluded) >= 80
    assert all(r["why_excluded"].strip() for r in excluded)
    assert not {norm_hex(r["unified"]) for r in excluded} & {e.key for e in load_label_key()}


def test_bad_label_is_reported_with_file_and_line(tmp_path):
    p = tmp_path / "k.csv"
    p.write_text(
        "unified,short_name,unicode_name,label7,label8_or_empty,rationale\n"
        "1F600,grinning,GRINNING FACE,happiness,,ok\n"
        "1F622,cry,CRYING FACE,gloom,,bad\n"
    )
    with pytest.raises(ValueError, match=r"k\.csv:3: label7 'gloom'"):
        load_label_key(p)


def test_domain_table_matches_the_design():
    assert len(DOMAINS) == 15
    fam = {f: sorted(d for d, s in DOMAINS.items() if s.family == f) for f in FAMILIES}
    assert fam["glossy"] == ["apple", "emojione4", "facebook", "google", "joypixels"]
    assert fam["flat"] == ["emojione_v1", "noto_v1", "openmoji", "twitter"]
    assert fam["line"] == ["emojione_mono", "fluent_mono", "openmoji_black"]
    assert fam["fluent"] == ["fluent3d", "fluent_color", "fluent_flat"]
    closed = {d for d, s in DOMAINS.items() if not PACKAGES[s.package].open_licence}
    assert closed == {"apple", "facebook", "joypixels", "emojione4"}


def test_code_point_and_name_normal_forms():
    assert norm_hex("263a-fe0f") == "263A" == norm_hex("263A")
    assert norm_hex("0023-FE0F-20E3") == "0023-20E3" == norm_hex("23-20e3")
    assert norm_hex("1f636_200d_1f32b_fe0f") == "1F636-200D-1F32B"
    assert slug("Piñata") == "pinata" and slug("man’s shoe") == "mans-shoe"
