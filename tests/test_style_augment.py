"""Style augmentations (kcdp_core/train/style_augment.py): each redraws the image and keeps its size,
deterministically in the generator; line art is strokes only; a background change keeps the drawing."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from kcdp_core.train.datasets import AugmentConfig, augment
from kcdp_core.train.style_augment import TRANSFORMS, background, line_art, permute_channels, restyle


def face() -> Image.Image:
    img = Image.new("RGB", (96, 96), (250, 250, 250))
    d = ImageDraw.Draw(img)
    d.ellipse((18, 18, 78, 78), fill=(240, 200, 40), outline=(20, 20, 20), width=2)
    for r in range(26, 0, -2):  # shading: more colours than flat fills keep
        d.ellipse((48 - r, 44 - r, 48 + r, 44 + r), fill=(240, 200 - 2 * r, 40 + 3 * r))
    d.ellipse((34, 38, 42, 46), fill=(30, 30, 30))
    d.ellipse((54, 38, 62, 46), fill=(30, 30, 30))
    d.arc((34, 48, 62, 68), 20, 160, fill=(120, 20, 20), width=3)
    return img


def test_every_transform_redraws_the_image_at_its_size_and_is_deterministic():
    img = face()
    for transform in TRANSFORMS:
        a = transform(img, np.random.default_rng(3))
        b = transform(img, np.random.default_rng(3))
        assert a.size == img.size and a.mode == "RGB", transform.__name__
        assert np.array_equal(np.asarray(a), np.asarray(b)), transform.__name__
        assert not np.array_equal(np.asarray(a), np.asarray(img)), transform.__name__


def test_line_art_is_dark_strokes_on_white_without_a_frame():
    lines = np.asarray(line_art(face(), np.random.default_rng(0)))
    assert set(np.unique(lines)) <= {0, 255}
    assert (lines == 0).mean() > 0.01  # the outline and features are drawn
    assert (lines[:2] == 255).all() and (lines[:, -2:] == 255).all()  # no edge along the frame


def test_permuted_channels_keep_the_pixels_values_and_a_new_background_keeps_the_face():
    img = face()
    permuted = np.asarray(permute_channels(img, np.random.default_rng(1)))
    assert sorted(permuted.reshape(-1, 3)[0]) == sorted(np.asarray(img).reshape(-1, 3)[0])
    moved = np.asarray(background(img, np.random.default_rng(1)))
    assert not np.array_equal(moved[0, 0], np.asarray(img)[0, 0])
    assert np.array_equal(moved[48, 48], np.asarray(img)[48, 48])  # inside the face: untouched


def test_style_probability_zero_draws_exactly_what_the_plain_augmentation_draws():
    img = face()
    plain = augment(img, np.random.default_rng(5), AugmentConfig())
    assert np.array_equal(
        np.asarray(plain), np.asarray(augment(img, np.random.default_rng(5), AugmentConfig(style=0)))
    )
    restyled = augment(img, np.random.default_rng(5), AugmentConfig(style=1.0))
    assert restyled.tobytes() != plain.tobytes()
    assert restyle(img, np.random.default_rng(9)).size == img.size
