"""Text encoding of knowledge: k = concat(T(c), sum_i T(t_i)) with fixed lengths and masks."""

from __future__ import annotations

import numpy as np
import pytest

from kcdp_core.config import Source
from kcdp_core.knowledge.text_encoder import TextEncoder
from kcdp_core.portable.assemble import assemble_knowledge, pool_knowledge, triplet_text


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    from kcdp_core.model.foundation import ensure_tiny_foundation

    root = str(ensure_tiny_foundation())
    return TextEncoder.from_sources(Source(root, "text_encoder"), Source(root, "tokenizer"), 8)


def test_k_shapes_and_caption_alone(encoder: TextEncoder) -> None:
    caps = ["grinning face", "the man is thrilled", "neutral face"]
    trips = [[("face", "is", "grinning")], [("man", "is", "thrilled"), ("man", "hugging", "woman")], []]
    k, mask = encoder.knowledge(caps, trips)
    L, D = encoder.length, encoder.dim
    assert k.shape == (3, 2 * L, D) and mask.shape == (3, 2 * L) and k.dtype == np.float32
    # Caption half = T(c) exactly.
    states, cmask = (x.numpy() for x in encoder.token_states(caps))
    np.testing.assert_allclose(k[:, :L], states, atol=1e-5)
    np.testing.assert_array_equal(mask[:, :L], cmask)
    # Triplet half = sum_i T(t_i) (masked), its mask the union of the triplet masks.
    t_states, t_mask = (x.numpy() for x in encoder.token_states([triplet_text(t) for t in trips[1]]))
    np.testing.assert_allclose(k[1, L:], (t_states * t_mask[..., None]).sum(0), atol=1e-5)
    np.testing.assert_array_equal(mask[1, L:], t_mask.max(0))
    # No triplet: the caption alone carries the knowledge; the triplet half is zero and masked out.
    assert not k[2, L:].any() and not mask[2, L:].any() and mask[2, :L].sum() > 0
    assert triplet_text(("man", "is", "thrilled")) == "man is thrilled"


def test_assemble_and_pool_numpy() -> None:
    rng = np.random.default_rng(0)
    cap, cmask = rng.normal(size=(4, 3)).astype(np.float32), np.array([1, 1, 0, 0], np.float32)
    k, m = assemble_knowledge(cap, cmask, np.zeros((0, 4, 3), np.float32), np.zeros((0, 4), np.float32))
    assert k.shape == (8, 3) and m.tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    pooled = pool_knowledge(k[None], m[None])
    np.testing.assert_allclose(pooled[0], cap[:2].mean(0), atol=1e-6)
