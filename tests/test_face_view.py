"""The face view (perception.face_view): one preprocessing crops it, the datasets give it beside the
pixels from the same (augmented) image."""

from __future__ import annotations

import numpy as np
from PIL import Image

from kcdp_core.portable.images import FACE_BOX, preprocess


def face_image(side: int = 100) -> Image.Image:
    """White, with the FACE_BOX region red: the face view is all red, the whole image is not."""
    img = Image.new("RGB", (side, side), "white")
    box = tuple(round(v * side) for v in FACE_BOX)
    img.paste((255, 0, 0), box)
    return img


def test_preprocess_crops_the_box_of_the_padded_square():
    face = preprocess(face_image(), 32, box=FACE_BOX)
    assert face.shape == (3, 32, 32)
    np.testing.assert_allclose(face[:, 2:-2, 2:-2].reshape(3, -1).mean(axis=1), [1, 0, 0], atol=0.02)
    whole = preprocess(face_image(), 32)
    assert whole[1].mean() > 0.4  # the white border is still there
    # a wide image is padded to a square first: the box is of that square, as the whole view sees it
    wide = Image.new("RGB", (200, 100), "blue")
    square = Image.new("RGB", (200, 200), "white")
    square.paste(wide, (0, 50))
    np.testing.assert_array_equal(preprocess(wide, 32, box=FACE_BOX), preprocess(square, 32, box=FACE_BOX))


def test_dataset_gives_the_face_of_the_same_augmented_image(tmp_path):
    import torch

    from kcdp_core.train.datasets import AugmentConfig, ImageKnowledgeDataset, Record, augment

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        face_image(96 + 8 * i).save(paths[-1])
    records = [Record(p, 0) for p in paths]
    k, mask = np.zeros((2, 4, 8), np.float32), np.ones((2, 4), np.float32)
    plain = ImageKnowledgeDataset(records, k, mask, 64, None, face_view=48)
    item = plain[1]
    assert item["pixels"].shape == (3, 64, 64) and item["face"].shape == (3, 48, 48)
    assert torch.equal(item["face"], torch.from_numpy(preprocess(face_image(104), 48, box=FACE_BOX)))
    assert "face" not in ImageKnowledgeDataset(records, k, mask, 64, None)[0]

    augmented = ImageKnowledgeDataset(records, k, mask, 64, AugmentConfig(), seed=3, face_view=48)
    item = augmented[0]
    again = augment(augmented.images[0], np.random.default_rng([3, 0, 0]), AugmentConfig())
    assert torch.equal(item["pixels"], torch.from_numpy(preprocess(again, 64)))
    assert torch.equal(item["face"], torch.from_numpy(preprocess(again, 48, box=FACE_BOX)))


def test_a_jittered_face_box_stays_square_inside_the_image_and_moves_only_the_face_view(tmp_path):
    import torch

    from kcdp_core.train.datasets import AugmentConfig, ImageKnowledgeDataset, Record, moved_box

    rng = np.random.default_rng(0)
    boxes = [moved_box(FACE_BOX, rng, 0.1) for _ in range(200)]
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
        assert abs((right - left) - (bottom - top)) < 1e-9 and 0.63 - 1e-9 <= right - left <= 0.77 + 1e-9
    assert len({round(b[0], 3) for b in boxes}) > 50  # it moves
    np.testing.assert_allclose(moved_box(FACE_BOX, rng, 0.0), FACE_BOX)

    face_image().save(tmp_path / "0.png")
    records, k, mask = (
        [Record(tmp_path / "0.png", 0)],
        np.zeros((1, 4, 8), np.float32),
        np.ones((1, 4), np.float32),
    )
    fixed = ImageKnowledgeDataset(records, k, mask, 64, AugmentConfig(), seed=3, face_view=48)
    moved = ImageKnowledgeDataset(records, k, mask, 64, AugmentConfig(face_box=0.1), seed=3, face_view=48)
    assert torch.equal(moved[0]["pixels"], fixed[0]["pixels"])  # the whole image draws as before
    assert not torch.equal(moved[0]["face"], fixed[0]["face"])
