"""k for training images: computed once per image content, reused, keyed by what it depends on."""

from __future__ import annotations

import numpy as np
import pytest
from train_data import make_domain


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_knowledge")
    mp = pytest.MonkeyPatch()
    mp.setenv("KCDP_CACHE", str(root / "cache"))
    from kcdp_core.config import tiny
    from kcdp_core.knowledge.text_encoder import TextEncoder

    config = tiny()
    f = config.foundation
    encoder = TextEncoder.from_sources(f.text_encoder, f.tokenizer, config.knowledge.text_length)
    images = sorted(make_domain(root / "dom", (250, 200, 40), per_class=1).rglob("*.png"))
    yield root, config, encoder, images
    mp.undo()


def test_k_cached_per_image_and_keyed_by_ablation(setup) -> None:
    from kcdp_core.train.knowledge import KnowledgeTable

    root, config, encoder, images = setup
    calls: list[int] = []

    def describe(paths):
        calls.append(len(paths))
        return [("grinning face", [("face", "is", "grinning")]) for _ in paths]

    table = KnowledgeTable(config, encoder, describe, folder=root / "k")
    k, mask = table.knowledge(images)
    assert k.shape == (len(images), 2 * config.knowledge.text_length, encoder.dim)
    assert mask.shape == k.shape[:2] and mask[:, config.knowledge.text_length :].sum() > 0
    assert calls == [len(images)]
    # Same images again (another run, another seed): nothing is recomputed, same arrays.
    k2, mask2 = KnowledgeTable(config, encoder, describe, folder=root / "k").knowledge(images[::-1])
    assert calls == [len(images)]
    np.testing.assert_array_equal(k2, k[::-1])
    np.testing.assert_array_equal(mask2, mask[::-1])
    # The expected values: the text encoder's own knowledge(), stored in float16.
    ref_k, ref_mask = encoder.knowledge(["grinning face"], [[("face", "is", "grinning")]])
    np.testing.assert_allclose(k[0], ref_k[0], atol=2e-3, rtol=1e-3)
    np.testing.assert_array_equal(mask[0], ref_mask[0])
    # Without triplets (Table 4 ablation) the cache key differs and the triplet half is masked out.
    no_t = KnowledgeTable(
        config.replace(knowledge={"use_triplets": False}), encoder, describe, folder=root / "k"
    )
    assert no_t.folder != table.folder
    k3, mask3 = no_t.knowledge(images[:2])
    assert calls == [len(images), 2]
    assert mask3[:, config.knowledge.text_length :].sum() == 0
    np.testing.assert_array_equal(
        k3[:, : config.knowledge.text_length], k[:2, : config.knowledge.text_length]
    )
