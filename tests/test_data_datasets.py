"""Dataset loaders on tiny fixture layouts of each dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from kcdp_core.data.datasets import (
    DatasetError,
    Sample,
    labels_of,
    load_abstract,
    load_artphoto,
    load_class_folders,
    load_dataset,
    load_emoset,
    load_emotionroi,
    load_manifest,
    load_ser30k,
    normalise_label,
    to_emoji7,
)


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), "red").save(path)
    return path


def test_class_folders_and_manifest(tmp_path):
    _img(tmp_path / "ds/anger/a.png")
    _img(tmp_path / "ds/anger/sub/b.jpg")
    _img(tmp_path / "ds/sadness/c.jpeg")
    (tmp_path / "ds/sadness/notes.txt").write_text("not an image")
    s = load_class_folders(tmp_path / "ds")
    assert [(p.path.name, p.label) for p in s] == [
        ("a.png", "anger"),
        ("b.jpg", "anger"),
        ("c.jpeg", "sadness"),
    ]
    assert labels_of(s) == ("anger", "sadness")
    (tmp_path / "m.csv").write_text("path,label,domain\nds/anger/a.png,Sad,x\n/abs/z.png,,\n")
    m = load_manifest(tmp_path / "m.csv", normalise=True)
    assert m == [Sample(tmp_path / "ds/anger/a.png", "sadness", "x"), Sample(Path("/abs/z.png"), None, None)]
    assert load_dataset(tmp_path / "m.csv")[1].label is None
    assert len(load_dataset(tmp_path / "ds")) == 3


def test_bad_layouts_name_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no images"):
        load_class_folders(tmp_path / "empty")
    (tmp_path / "bad.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(DatasetError, match=r"bad\.csv: needs a 'path' column"):
        load_manifest(tmp_path / "bad.csv")
    with pytest.raises(DatasetError, match=r"train\.json"):
        load_emoset(tmp_path, "train")


def test_label_mapping():
    assert normalise_label("Joy") == "happiness" and normalise_label("content") == "contentment"
    assert to_emoji7("excitement") == "happiness" and to_emoji7("awe") == "surprise"
    assert to_emoji7("sad") == "sadness" and to_emoji7(None) is None
    with pytest.raises(ValueError):
        to_emoji7("boredom")


def test_emoset_and_ser30k(tmp_path):
    (tmp_path / "emoset").mkdir()
    (tmp_path / "emoset/val.json").write_text(
        json.dumps([["amusement", "image/amusement/amusement_00001.jpg", "annotation/amusement/a.json"]])
    )
    e = load_emoset(tmp_path / "emoset", "val")
    assert e == [Sample(tmp_path / "emoset/image/amusement/amusement_00001.jpg", "amusement", "emoset")]
    ser = tmp_path / "ser/Annotations"
    ser.mkdir(parents=True)
    (ser / "test.json").write_text(
        json.dumps(
            {
                "annotations": [
                    {"topic": "01-panda", "file_name": "s1.jpg", "anno": 4},
                    {"topic": "01-panda", "file_name": "s2.jpg", "anno": 7},
                ]
            }
        )
    )
    s = load_ser30k(tmp_path / "ser", "test")
    assert [(x.path.name, x.label) for x in s] == [("s1.jpg", "happiness"), ("s2.jpg", "surprise")]
    (ser / "test.json").write_text(json.dumps({"annotations": [{"topic": "t", "file_name": "f", "anno": 9}]}))
    with pytest.raises(DatasetError, match="anno 9"):
        load_ser30k(tmp_path / "ser", "test")


def test_emotionroi_artphoto_abstract(tmp_path):
    _img(tmp_path / "roi/images/joy/1.jpg")
    _img(tmp_path / "roi/images/fear/2.jpg")
    (tmp_path / "roi/training_testing_split").mkdir()
    (tmp_path / "roi/training_testing_split/testing.txt").write_text("fear/2.jpg\n")
    assert [x.label for x in load_emotionroi(tmp_path / "roi")] == ["fear", "happiness"]
    assert [x.label for x in load_emotionroi(tmp_path / "roi", "testing")] == ["fear"]
    _img(tmp_path / "art/amusement_1.jpg")
    _img(tmp_path / "art/sad_12.jpg")
    assert [x.label for x in load_artphoto(tmp_path / "art")] == ["amusement", "sadness"]
    _img(tmp_path / "art/unknown_1.jpg")
    with pytest.raises(DatasetError, match="unknown_1.jpg"):
        load_artphoto(tmp_path / "art")
    (tmp_path / "abs").mkdir()
    (tmp_path / "abs/ABSTRACT_groundTruth.csv").write_text(
        "'imageName','Amusement','Anger','Awe','Content','Disgust','Excitement','Fear','Sad'\n"
        "'a.jpg',1,0,0,5,0,0,0,0\n"
        "'b.jpg',2,2,0,0,0,0,0,0\n"
        "'c.jpg',0,0,0,0,0,0,0,3\n"
    )
    a = load_abstract(tmp_path / "abs")
    assert [(x.path.name, x.label) for x in a] == [("a.jpg", "contentment"), ("c.jpg", "sadness")]
