"""Packs (kcdp_runtime.packs): one style's images answered together by their class centroids, through
the Pipeline and kcdp-infer --pack; the answers alone are kept and nothing is lost to a bad image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from runtime_export import build_fake_export
from runtime_images import BLUE, RED, YELLOW, png_bytes

from kcdp_core.portable.centroids import centroid_labels
from kcdp_runtime.cli import main
from kcdp_runtime.packs import PACK_MIN, answer_as_pack
from kcdp_runtime.pipeline import Pipeline

LABELS = ["a", "b", "c"]


def _clusters(rng: np.random.Generator, per: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Three tight clusters of views in 8 dimensions and their classes."""
    centres = np.eye(8)[:3] * 5
    y = np.repeat(np.arange(3), per)
    return centres[y] + rng.normal(0, 0.3, (len(y), 8)), y


def test_centroids_correct_answers_that_the_cluster_outvotes():
    rng = np.random.default_rng(0)
    views, y = _clusters(rng)
    probs = np.full((len(y), 3), 0.1)
    probs[np.arange(len(y)), y] = 0.8
    wrong = rng.choice(len(y), size=len(y) // 3, replace=False)  # a third confidently wrong
    probs[wrong] = 0.05
    probs[wrong, (y[wrong] + 1) % 3] = 0.9
    assert (probs.argmax(1) == y).mean() < 0.7
    assert (centroid_labels(views, probs) == y).all()


def test_a_class_without_weight_is_never_given():
    views, y = _clusters(np.random.default_rng(1))
    probs = np.eye(3)[y] * 0.8 + 0.1
    probs[:, 2] = 0  # a class the model may not answer (--classes)
    labels = centroid_labels(views, probs)
    assert set(labels) <= {0, 1} and (labels[y < 2] == y[y < 2]).all()


def test_too_small_a_pack_is_left_alone_and_errors_stay():
    results = [
        {"image": f"{n}", "label": "a", "scores": dict.fromkeys(LABELS, 1 / 3)} for n in range(PACK_MIN - 1)
    ]
    results.append({"image": "bad", "error": "bad: not an image"})
    before = json.loads(json.dumps(results))
    assert not answer_as_pack(results, [np.ones(4)] * (PACK_MIN - 1) + [None], LABELS)
    assert results == before


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return build_fake_export(tmp_path_factory.mktemp("export") / "fake")


def _shades(n: int) -> list[bytes]:
    base = [RED, BLUE, YELLOW]
    return [
        png_bytes(Image.new("RGB", (40, 30), tuple(max(0, v - 3 * i) for v in base[i % 3]))) for i in range(n)
    ]


def test_a_pack_through_the_pipeline_keeps_each_answer_alone(export):
    pipe = Pipeline.from_pretrained(export)
    images = _shades(PACK_MIN + 2)
    alone = pipe.run(images)
    packed = pipe.run(images[:5] + [b"not an image"] + images[5:], pack=True)
    assert packed[5] == {"image": "<bytes 5>", "error": "<bytes 5>: not an image (unrecognised format)"}
    del packed[5]
    for got, ref in zip(packed, alone, strict=True):
        assert got["pack"] == len(images) and got["image_label"] == ref["label"]
        assert got["label"] in pipe.labels and got["scores"] == ref["scores"]
    # three colours the model already tells apart: the pack's clusters agree with its answers
    assert [r["label"] for r in packed] == [r["label"] for r in alone]
    small = pipe.run(images[: PACK_MIN - 1], pack=True)
    assert all(r["pack"] == 0 and r["label"] == r["image_label"] for r in small)


def test_kcdp_infer_pack_answers_in_argument_order(export, tmp_path, capsys):
    folder = tmp_path / "pack"
    folder.mkdir()
    for n, data in enumerate(_shades(PACK_MIN)):
        (folder / f"{n:02d}.png").write_bytes(data)
    (folder / "99.png").write_bytes(b"broken")
    assert main([str(folder), "--model", str(export), "--json", "--pack", "--quiet"]) == 1  # one image failed
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == [str(p) for p in sorted(folder.glob("*.png"))]
    assert "error" in rows[-1] and all(r["pack"] == PACK_MIN for r in rows[:-1])
    assert main([str(folder / "00.png"), "--model", str(export), "--pack"]) == 0
    out, err = capsys.readouterr()
    assert f"fewer than {PACK_MIN} readable images" in err and "pack of" not in out
