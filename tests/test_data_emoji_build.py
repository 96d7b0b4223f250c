"""The emoji builder on fixture tarballs: domains, corpus, index, families, splits, cache reuse."""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest
from data_fixtures import KEY, build_fixture_cache
from PIL import Image

from kcdp_core.data.emoji_build import build_emoji
from kcdp_core.data.emoji_catalog import norm_hex


@pytest.fixture()
def built(tmp_path):
    packages, sources = build_fixture_cache(tmp_path / "cache")
    out = tmp_path / "out"
    res = build_emoji(
        out,
        size=32,
        cache_dir=tmp_path / "cache",
        offline=True,
        packages=packages,
        sources=sources,
        label_key=KEY,
        workers=1,
        log=lambda s: None,
    )
    return out, res, packages, sources, tmp_path


def test_domains_have_the_key_emojis_as_white_rgb_squares(built):
    out, res, *_ = built
    assert res.errors == []
    # rast lacks 1F621 (reported missing); vec lacks 1F622 and 263A; icons has 1F600 and 263A.
    assert res.domain_counts == {"rast": 3, "closed": 4, "vec": 2, "icons": 2}
    assert res.missing["rast"] == ["1F621"]
    assert sorted(res.missing["vec"]) == ["1F622", "263A-FE0F"]
    files = sorted(p.relative_to(out / "domains").as_posix() for p in (out / "domains").rglob("*.png"))
    assert "rast/happiness/263A-FE0F.png" in files and "closed/anger/1F621.png" in files
    assert len(files) == 11
    img = Image.open(out / "domains/rast/sadness/1F622.png")
    assert img.mode == "RGB" and img.size == (32, 32)
    px = np.asarray(img)
    # Cropped to the disc and centred: corners are white, the centre is the disc's blue.
    assert tuple(px[0, 0]) == (255, 255, 255) and tuple(px[16, 16]) == (0, 100, 250)
    # The disc touches both sides after cropping (it was a 20-px disc in a 40-px canvas).
    assert px[16, 0].tolist() != [255, 255, 255] or px[16, 1].tolist() != [255, 255, 255]
    # currentColor in an Iconify body draws black.
    g = np.asarray(Image.open(out / "domains/icons/happiness/1F600.png"))
    assert g[16, 16].tolist() == [0, 0, 0]


def test_corpus_is_open_art_only_without_the_benchmark(built):
    out, res, *_ = built
    rows = [json.loads(line) for line in (out / "corpus/captions.jsonl").read_text().splitlines()]
    keys = {norm_hex(r["codepoint"]) for r in rows}
    assert not keys & {e.key for e in KEY}  # none of the benchmark emojis
    assert {r["domain"] for r in rows} == {"rast", "vec", "icons"}  # the closed licence stays out
    by = {(r["domain"], r["codepoint"]): r for r in rows}
    # rast: wink + dark thumbs up (private-use E000 has no CLDR entry); vec: dog + wink;
    # icons: dog (named by its Unicode short name) + thumbs up + its flipped dark-skin alias.
    assert set(by) == {
        ("rast", "1F609"),
        ("rast", "1F44D-1F3FF"),
        ("vec", "1F436"),
        ("vec", "1F609"),
        ("icons", "1F436"),
        ("icons", "1F44D"),
        ("icons", "1F44D-1F3FF"),
    }
    assert res.corpus_size == 7 and res.corpus_counts == {"rast": 2, "vec": 2, "icons": 3}
    wink = by[("rast", "1F609")]
    assert wink["caption"] == "winking face: face, wink"
    assert wink["group"] == "Smileys & Emotion" and wink["subgroup"] == "face-smiling"
    assert wink["license"] == "fixture licence"
    assert by[("icons", "1F44D-1F3FF")]["caption"] == "thumbs up: dark skin tone: hand, up"
    assert len(rows) == 7
    for r in rows:
        assert (out / "corpus" / r["path"]).is_file()


def test_index_records_provenance_of_every_image(built):
    out, res, packages, *_ = built
    with open(out / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    on_disk = {p.relative_to(out).as_posix() for p in out.glob("domains/**/*.png")} | {
        p.relative_to(out).as_posix() for p in out.glob("corpus/**/*.png")
    }
    assert {r["path"] for r in rows} == on_disk and len(rows) == 18
    r = next(r for r in rows if r["path"] == "domains/icons/happiness/263A-FE0F.png")
    assert r["package"] == "iconify-open" and r["version"] == "1.0.0"
    assert r["member"] == "package/icons.json#white-smiling-face" and r["label"] == "happiness"
    r = next(r for r in rows if r["path"] == "domains/rast/happiness/1F600.png")
    assert r["member"] == "package/img/x/64/1f600.png"  # not the _alt variant


def test_families_and_disjoint_folds(built):
    out, *_ = built
    # A family pools its domains' images as <label>/<domain>_<codepoint>.png.
    flat = sorted(p.name for p in (out / "families/flat").glob("*/*.png"))
    assert flat == ["rast_1F600.png", "rast_1F622.png", "rast_263A-FE0F.png"]
    assert len(list((out / "families/glossy").glob("*/*.png"))) == 4
    f0 = list(csv.DictReader(open(out / "splits/disjoint_fold0.csv")))
    f1 = list(csv.DictReader(open(out / "splits/disjoint_fold1.csv")))
    c0, c1 = {r["codepoint"] for r in f0}, {r["codepoint"] for r in f1}
    assert not c0 & c1 and c0 | c1 == {e.unified for e in KEY}
    # Stratified: the two happiness emojis go to different folds.
    assert {r["label"] for r in f0 if r["label"] == "happiness"} == {"happiness"}
    assert {r["label"] for r in f1 if r["label"] == "happiness"} == {"happiness"}
    closed = {p.stem for p in (out / "domains/closed").glob("*/*.png")}
    assert len(closed) == 4 and closed <= c0 | c1


def test_second_run_reuses_every_domain(built):
    out, res, packages, sources, tmp = built
    first = {p: p.stat().st_mtime_ns for p in out.glob("domains/**/*.png")}
    t0 = time.perf_counter()
    res2 = build_emoji(
        out,
        size=32,
        cache_dir=tmp / "cache",
        offline=True,
        packages=packages,
        sources=sources,
        label_key=KEY,
        workers=1,
        log=lambda s: None,
    )
    assert time.perf_counter() - t0 < 5
    assert sorted(res2.reused) == sorted(sources)
    assert res2.domain_counts == res.domain_counts and res2.corpus_size == res.corpus_size
    assert {p: p.stat().st_mtime_ns for p in out.glob("domains/**/*.png")} == first
    # A deleted image invalidates its domain only.
    (out / "domains/vec/happiness/1F600.png").unlink()
    res3 = build_emoji(
        out,
        size=32,
        cache_dir=tmp / "cache",
        offline=True,
        packages=packages,
        sources=sources,
        label_key=KEY,
        workers=1,
        log=lambda s: None,
    )
    assert "vec" not in res3.reused and (out / "domains/vec/happiness/1F600.png").is_file()
    # A new size rebuilds.
    res4 = build_emoji(
        out,
        size=16,
        cache_dir=tmp / "cache",
        offline=True,
        packages=packages,
        sources=sources,
        label_key=KEY,
        workers=1,
        log=lambda s: None,
    )
    assert res4.reused == [] and Image.open(out / "domains/rast/sadness/1F622.png").size == (16, 16)


def test_multiprocess_render_matches_single(built, tmp_path):
    out, res, packages, sources, tmp = built
    out2 = tmp_path / "out2"
    build_emoji(
        out2,
        size=32,
        cache_dir=tmp / "cache",
        offline=True,
        packages=packages,
        sources=sources,
        label_key=KEY,
        workers=2,
        log=lambda s: None,
    )
    a = np.asarray(Image.open(out / "domains/vec/anger/1F621.png"))
    b = np.asarray(Image.open(out2 / "domains/vec/anger/1F621.png"))
    assert np.array_equal(a, b)


def test_unknown_domain_and_bad_size_are_usage_errors(tmp_path):
    from kcdp_core.data.cli import main

    assert main(["emoji", "--out", str(tmp_path / "o"), "--domains", "nope", "--offline"]) == 2
    assert main(["emoji", "--out", str(tmp_path / "o"), "--size", "2", "--offline"]) == 2


def test_licences_file_marks_closed_art(built):
    out, *_ = built
    text = (out / "LICENSES.md").read_text()
    assert "| closed | raster-closed@1.0.0 | fixture licence — *not redistributable* |" in text
    assert "| rast | raster-open@1.0.0 | fixture licence |" in text
    report = json.loads((out / "report.json").read_text())
    assert report["corpus_total"] == 7 and report["missing"]["rast"] == ["1F621"]


def test_missing_svg_renderer_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    packages, sources = build_fixture_cache(tmp_path / "cache")
    monkeypatch.setitem(sys.modules, "resvg_py", None)  # import now raises ImportError
    with pytest.raises(RuntimeError, match="pip install resvg-py"):
        build_emoji(
            tmp_path / "o",
            cache_dir=tmp_path / "cache",
            offline=True,
            packages=packages,
            sources=sources,
            label_key=KEY,
            workers=1,
            log=lambda s: None,
        )
    # Raster-only domains still build without it.
    res = build_emoji(
        tmp_path / "o",
        domains=["rast"],
        cache_dir=tmp_path / "cache",
        offline=True,
        packages=packages,
        sources=sources,
        label_key=KEY,
        workers=1,
        log=lambda s: None,
    )
    assert res.domain_counts == {"rast": 3}


def test_bad_drawings_are_reported_and_the_rest_builds(tmp_path):
    packages, sources = build_fixture_cache(tmp_path / "cache", broken=True)
    kw = dict(
        cache_dir=tmp_path / "cache",
        offline=True,
        packages=packages,
        sources=sources,
        label_key=KEY,
        workers=1,
        log=lambda s: None,
    )
    res = build_emoji(tmp_path / "o", size=32, **kw)
    # The corrupt PNG is an error naming the file; the blank SVG is a skip; all else is built.
    assert len(res.errors) == 1 and "rast package/img/x/64/1f436.png" in res.errors[0]
    assert res.skipped == ["vec package/color/svg/1F44D.svg: empty drawing (fully transparent)"]
    assert res.domain_counts == {"rast": 3, "closed": 4, "vec": 2, "icons": 2}
    assert res.corpus_counts == {"rast": 2, "vec": 2, "icons": 3}
    # The domain with an error is not stamped (retried next run); the skip is remembered.
    res2 = build_emoji(tmp_path / "o", size=32, **kw)
    assert "rast" not in res2.reused and "vec" in res2.reused
    assert res2.skipped == res.skipped and len(res2.errors) == 1
