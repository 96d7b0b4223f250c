"""kcdp-data procedural: deterministic faces whose classes differ in the expression geometry."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from kcdp_core.data.avatar_key import load_training_styles
from kcdp_core.data.cli import main as data_main
from kcdp_core.data.procedural_faces import (
    GEOMETRY,
    appearance_in_style,
    build_procedural,
    draw_face,
    face_rng,
    render_face,
    sample_appearance,
    sample_expression,
    sample_style,
)
from kcdp_core.portable.labels import EMOJI7


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _digest(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "report.json"  # the report carries the build time
    }


@pytest.fixture(scope="module")
def geometry() -> dict[str, np.ndarray]:
    """label -> [200, len(GEOMETRY)] sampled expression parameters."""
    return {
        label: np.array(
            [[getattr(sample_expression(label, face_rng(label, n)), g) for g in GEOMETRY] for n in range(200)]
        )
        for label in EMOJI7
    }


def _mean(geometry, label: str, name: str) -> float:
    return float(geometry[label][:, GEOMETRY.index(name)].mean())


def test_a_face_is_fixed_by_class_and_seed(tmp_path):
    a, expr_a = render_face("anger", 3, 64)
    b, expr_b = render_face("anger", 3, 64)
    assert _png(a) == _png(b) and expr_a == expr_b and a.size == (64, 64) and a.mode == "RGB"
    assert _png(render_face("anger", 4, 64)[0]) != _png(a)
    assert _png(render_face("sadness", 3, 64)[0]) != _png(a)
    first = tmp_path / "a"
    build_procedural(first, per_class=3, size=48, workers=1)
    again = tmp_path / "b"
    build_procedural(again, per_class=3, size=48, workers=2)  # the same bytes whatever the worker count
    assert _digest(first) == _digest(again)
    fresh = tmp_path / "c"
    build_procedural(fresh, per_class=3, size=48, workers=1, seed_start=1000)
    old = {v for k, v in _digest(first).items() if k.endswith(".png")}
    new = {v for k, v in _digest(fresh).items() if k.endswith(".png")}
    assert len(new) == 21 and not old & new


def test_the_classes_follow_their_facs_prototypes(geometry):
    m = lambda label, name: _mean(geometry, label, name)  # noqa: E731
    # lip corners: up in happiness, level in neutral, down in sadness, anger, disgust and fear
    assert m("happiness", "mouth_curve") > 0.5 and abs(m("neutral", "mouth_curve")) < 0.05
    assert max(m(c, "mouth_curve") for c in ("sadness", "anger", "disgust", "fear")) < -0.2
    # brows: inner ends up in sadness and fear, down in anger; high in surprise and fear
    assert (
        m("sadness", "brow_tilt") > 0.25 and m("fear", "brow_tilt") > 0.25 and m("anger", "brow_tilt") < -0.25
    )
    assert (
        m("surprise", "brow_raise") > 0.15
        and m("fear", "brow_raise") > 0.1
        and m("anger", "brow_raise") < -0.05
    )
    # eyes: wide in surprise and fear, narrowed in sadness, anger and disgust
    assert min(m("surprise", "eye_open"), m("fear", "eye_open")) > 1.3
    assert max(m(c, "eye_open") for c in ("sadness", "anger", "disgust")) < 0.9
    # mouth: a dropped jaw in surprise, stretched lips in fear; the nose wrinkle and sneer only in disgust
    assert m("surprise", "mouth_open") > 0.6 and m("surprise", "mouth_round") > 0.75
    assert m("fear", "mouth_width") > 0.5 > m("surprise", "mouth_width")
    for name in ("nose_wrinkle", "sneer"):
        assert m("disgust", name) > 0.5 and all(m(c, name) == 0 for c in EMOJI7 if c != "disgust")


def test_the_classes_are_separable_from_the_geometry_alone(geometry):
    # nearest class mean on standardised parameters, fitted on the first half, scored on the second
    train = {label: g[:100] for label, g in geometry.items()}
    test = {label: g[100:] for label, g in geometry.items()}
    pooled = np.vstack(list(train.values()))
    mu, sd = pooled.mean(0), pooled.std(0) + 1e-6
    centroids = np.stack([((train[label] - mu) / sd).mean(0) for label in EMOJI7])
    correct = 0
    for i, label in enumerate(EMOJI7):
        z = (test[label] - mu) / sd
        nearest = np.argmin(((z[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
        correct += int((nearest == i).sum())
    assert correct / (100 * len(EMOJI7)) > 0.97


def test_the_drawing_changes_with_the_expression_and_not_otherwise():
    look = sample_appearance(np.random.default_rng(5))
    rng = np.random.default_rng(1)
    faces = {label: np.asarray(draw_face(sample_expression(label, rng), look, 96), float) for label in EMOJI7}
    assert np.array_equal(
        faces["anger"],
        np.asarray(draw_face(sample_expression("anger", np.random.default_rng(1)), look, 96), float),
    )
    for a in EMOJI7:
        for b in EMOJI7:
            if a < b:  # the same head, hair, palette and pose: only the features differ
                changed = (np.abs(faces[a] - faces[b]).sum(-1) > 30).mean()
                assert 0.003 < changed < 0.35, (a, b, changed)


def test_appearance_varies_across_faces():
    looks = [sample_appearance(face_rng("neutral", n)) for n in range(300)]
    assert len({lk.rendering for lk in looks}) == 5 and len({lk.hair_style for lk in looks}) == 6
    assert len({lk.background for lk in looks}) == 4 and len({lk.eye_style for lk in looks}) == 3
    assert {lk.glasses for lk in looks} == {True, False} and {lk.hat for lk in looks} == {True, False}
    rotations = np.array([lk.rotation for lk in looks])
    assert rotations.min() < -12 and rotations.max() > 12
    yaws = np.array([lk.yaw for lk in looks])
    assert yaws.min() < -0.25 and yaws.max() > 0.25


def test_the_command_writes_class_folders_an_index_and_a_sheet(tmp_path, capsys):
    out, sheet = tmp_path / "faces", tmp_path / "sheet.png"
    argv = ["procedural", "--out", str(out), "--per-class", "4", "--size", "40", "--seed-start", "7"]
    assert data_main([*argv, "--contact-sheet", str(sheet), "--workers", "1"]) == 0
    for label in EMOJI7:
        assert sorted(p.name for p in (out / label).iterdir()) == [f"{n}.png" for n in (10, 7, 8, 9)]
    with open(out / "index.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 28 and all((out / r["path"]).is_file() for r in rows)
    assert {r["label"] for r in rows if float(r["nose_wrinkle"]) > 0} == {"disgust"}
    assert sheet.is_file() and sheet.stat().st_size > 1000
    assert data_main(["procedural", "--out", str(out), "--per-class", "0"]) == 2
    assert data_main(["procedural", "--out", str(out), "--contact-sheet", str(out / "s.png")]) == 2
    assert "outside --out" in capsys.readouterr().err


def test_a_style_fixes_the_look_and_its_faces_vary_within_it():
    style = sample_style(3)
    assert sample_style(3) == style and sample_style(4) != style
    looks = [appearance_in_style(style, face_rng("happiness", n, style.number)) for n in range(60)]
    kept = ("rendering", "background", "ink", "outline", "stroke", "head_aspect", "eye_style", "nose_style")
    assert all(getattr(lk, name) == getattr(style.look, name) for lk in looks for name in kept)
    assert {lk.skin for lk in looks} == set(style.skins) and {lk.hair_style for lk in looks} == set(
        style.hair_styles
    )
    assert len({lk.rotation for lk in looks}) == 60 and max(abs(lk.rotation) for lk in looks) <= 6
    a, expr = render_face("anger", 2, 48, style)
    assert _png(render_face("anger", 2, 48, style)[0]) == _png(a)
    # the style draws its own face: another geometry than the face of that number with a look of its own
    assert render_face("anger", 2, 48)[1] != expr and _png(
        render_face("anger", 2, 48, sample_style(4))[0]
    ) != _png(a)


def test_faces_of_one_style_are_closer_than_faces_of_two():
    def colours(number: int) -> np.ndarray:  # each face's mean colour
        style = sample_style(number)
        return np.array(
            [
                np.asarray(render_face(label, n, 48, style)[0], float).mean((0, 1))
                for label in EMOJI7
                for n in range(3)
            ]
        )

    per_style = [colours(n) for n in range(6)]
    within = np.mean([np.linalg.norm(c - c.mean(0), axis=1).mean() for c in per_style])
    centres = np.array([c.mean(0) for c in per_style])
    across = np.linalg.norm(centres - centres.mean(0), axis=1).mean()
    assert across > 2 * within, (across, within)


def test_the_command_writes_one_folder_per_style(tmp_path):
    out, sheet = tmp_path / "styles", tmp_path / "sheet.png"
    argv = ["procedural", "--out", str(out), "--per-class", "2", "--size", "40", "--workers", "1"]
    assert data_main([*argv, "--styles", "2", "--style-start", "5", "--contact-sheet", str(sheet)]) == 0
    assert sorted(p.name for p in (out / "domains").iterdir()) == ["procedural-5", "procedural-6"]
    for name in ("procedural-5", "procedural-6"):
        assert sorted(p.name for p in (out / "domains" / name).iterdir() if p.is_dir()) == sorted(EMOJI7)
    report = json.loads((out / "domains" / "procedural-6" / "report.json").read_text())
    assert report["style"]["number"] == 6 and report["per_class"] == 2
    assert sheet.is_file() and sheet.stat().st_size > 1000
    first = _digest(out)
    assert data_main([*argv, "--styles", "2", "--style-start", "5"]) == 0 and _digest(out) == first
    assert data_main([*argv, "--styles", "0"]) == 2


def test_procedural_faces_are_on_the_list_of_training_styles():
    row = load_training_styles()["procedural"]
    assert row.set == "procedural" and row.classes == EMOJI7
