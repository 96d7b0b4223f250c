"""benchmarks/caption_expressions.py: which classes a retrieved caption names, and how it is scored."""

from __future__ import annotations

import pytest
from accuracy_script import load_script
from PIL import Image


@pytest.fixture(scope="module")
def ce():
    return load_script("caption_expressions")


def test_a_caption_names_the_classes_whose_words_it_holds(ce) -> None:
    assert ce.named_classes("grinning face: cheerful, face, grin, smile") == {"happiness"}
    assert ce.named_classes("a drawn portrait of a person with a sad mouth and angry eyes") == {
        "sadness",
        "anger",
    }
    assert ce.named_classes("a cartoon portrait of an adventurer with long hair") == set()
    # stems, not substrings: "grinch" is no grin, "madrid" no anger
    assert ce.named_classes("flag: Madrid") == set()
    assert ce.verdict("frowning face: sad", "sadness") == "right"
    assert ce.verdict("face with tears of joy: laugh, tear", "happiness") == "right among others"
    assert ce.verdict("a smiling mouth", "anger") == "wrong"
    assert ce.verdict("flag: Japan", "anger") == "none"


def test_macro_f1_averages_the_classes_of_the_truth_only(ce) -> None:
    # "fear" is predicted but absent from the truth: it costs the classes it was taken from, nothing more
    truth = ["anger", "anger", "happiness", "happiness"]
    pred = ["anger", "fear", "happiness", "happiness"]
    assert ce.macro_f1(truth, pred) == pytest.approx((2 / 3 + 1.0) / 2)


def test_labelled_images_reads_a_domains_folder_or_one_style_with_a_seeded_draw(ce, tmp_path) -> None:
    for style in ("a", "b"):
        for label in ("anger", "happiness"):
            folder = tmp_path / "domains" / style / label
            folder.mkdir(parents=True)
            for i in range(5):
                Image.new("RGB", (8, 8)).save(folder / f"{i}.png")
    both = ce.labelled_images(tmp_path / "domains", 3, seed=0)
    assert sorted(both) == ["a", "b"] and len(both["a"]) == 6
    assert both == ce.labelled_images(tmp_path / "domains", 3, seed=0)
    assert both != ce.labelled_images(tmp_path / "domains", 3, seed=1)
    one = ce.labelled_images(tmp_path / "domains" / "b", None, seed=0)
    assert list(one) == ["b"] and {label for _, label in one["b"]} == {"anger", "happiness"}
    with pytest.raises(SystemExit, match="no <class>/ image folders"):
        (tmp_path / "empty" / "x").mkdir(parents=True)
        ce.labelled_images(tmp_path / "empty", None, seed=0)
