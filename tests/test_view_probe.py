"""benchmarks/view_probe.py: the crop of each view and the across-styles probe."""

from __future__ import annotations

import numpy as np
import pytest
from accuracy_script import load_script
from PIL import Image


def test_centre_view_crops_the_box_and_full_keeps_the_image(tmp_path):
    vp = load_script("view_probe")
    img = Image.new("RGB", (200, 100), "white")
    assert vp.crop(img, vp.VIEWS["full"]) is img
    assert vp.crop(img, vp.VIEWS["centre"]).size == (140, 70)  # 70% of each side

    # a folder of two classes: only the first per_class images of each, cropped, under out/
    src = tmp_path / "style"
    for label in ("happiness", "sadness"):
        (src / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (100, 100), (i * 40, 0, 0)).save(src / label / f"{label}-{i}.png")
    out = vp.view_folder(src, 2, vp.VIEWS["centre"], tmp_path / "out")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == [f"{c}/{c}-{i}.png" for c in ("happiness", "sadness") for i in (0, 1)]
    assert all(Image.open(out / f).size == (70, 70) for f in files)


def test_a_render_redraws_every_crop_grey_or_as_line_art(tmp_path):
    vp = load_script("view_probe")
    src = tmp_path / "style" / "happiness"
    src.mkdir(parents=True)
    img = Image.new("RGB", (100, 100), (240, 200, 40))
    img.paste((20, 20, 120), (30, 30, 70, 70))  # a blue square: edges inside the crop
    img.save(src / "a.png")
    grey = np.asarray(
        Image.open(
            vp.view_folder(src.parent, 1, vp.VIEWS["full"], tmp_path / "g", "gray") / "happiness/a.png"
        )
    )
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    lines = np.asarray(
        Image.open(
            vp.view_folder(src.parent, 1, vp.VIEWS["full"], tmp_path / "l", "lines") / "happiness/a.png"
        )
    )
    assert set(np.unique(lines)) == {0, 255} and lines[50, 50].tolist() == [255, 255, 255]
    assert (lines[28:32, 35:65] == 0).any()  # the square's edge is a stroke


def test_across_styles_scores_the_left_out_style_from_the_others():
    vp = load_script("view_probe")
    rng = np.random.default_rng(0)
    y = np.repeat(np.array(["happiness", "sadness"]), 30)
    sign = np.where(y == "happiness", 1.0, -1.0)[:, None]

    def style(offset: float, informative: bool) -> dict:
        # a style offset (removed by the per-style standardisation) and, where informative, the class
        # on the first feature
        x = rng.normal(size=(60, 4)) + offset
        if informative:
            x[:, :1] += 3 * sign
        return {"emb": x, "y": y}

    feats = {"a": style(5.0, True), "b": style(-2.0, True), "c": style(0.0, True), "d": style(1.0, False)}
    styles = list(feats)
    assert vp.across_styles(feats, "c", styles) > 0.95  # learnt on a and b, despite their offsets
    assert vp.across_styles(feats, "d", styles) < 0.75  # nothing in d to read


def test_a_held_out_style_is_refused_before_anything_is_read(tmp_path, capsys):
    vp = load_script("view_probe")
    with pytest.raises(SystemExit):
        vp.main(["--avatars", str(tmp_path), "--styles", "micah", "--work", str(tmp_path / "w")])
    assert "not on the list of training styles" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
