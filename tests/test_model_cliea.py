import math

import pytest
import torch
from torch.nn import functional as F

from kcdp_core.config import CLIEAConfig
from kcdp_core.model.cliea import CLIEA
from kcdp_core.model.losses import ccl_loss, masked_cross_entropy

C, LP, D, T, FEAT = 5, 6, 16, 10, 24


def make_cliea(**cfg) -> CLIEA:
    torch.manual_seed(0)
    states = torch.randn(C, LP, D)
    mask = torch.ones(C, LP)
    mask[:, 4:] = 0
    return CLIEA(CLIEAConfig(dim=32, num_heads=4, **cfg), FEAT, D, states, mask)


def batch(n: int = 8):
    torch.manual_seed(1)
    k = torch.randn(n, T, D)
    k_mask = torch.ones(n, T)
    k_mask[:, 7:] = 0
    return torch.randn(n, FEAT), k, k_mask, torch.arange(n) % C


def test_scores_shape_and_range():
    cliea = make_cliea()
    v, k, km, _ = batch()
    scores = cliea(v, k, km)
    assert scores.shape == (8, C)
    assert scores.abs().max() <= 1 / 0.07 + 1e-4  # cosine / tau


def test_masked_knowledge_tokens_are_ignored():
    cliea = make_cliea().eval()
    v, k, km, _ = batch()
    k2 = k.clone()
    k2[:, 7:] = 100.0  # padding positions
    torch.testing.assert_close(cliea(v, k, km), cliea(v, k2, km))


def test_ccl_loss_falls_when_v_aligns_with_its_class_prompt():
    cliea = make_cliea()
    _, k, km, y = batch()
    with torch.no_grad():
        s = F.normalize(cliea.prompt_embeddings(k, km), dim=-1)  # [B, C, dim]
        aligned = s[torch.arange(len(y)), y]  # v' equal to its own class prompt
        wrong = s[torch.arange(len(y)), (y + 1) % C]
        scores_aligned = torch.einsum("bd,bcd->bc", aligned, s) / 0.07
        scores_wrong = torch.einsum("bd,bcd->bc", wrong, s) / 0.07
    for form in ("ce", "paper"):
        assert ccl_loss(scores_aligned, y, form) < ccl_loss(scores_wrong, y, form)

    # And training the mapping network pulls v' to its class prompt: the loss falls.
    v, k, km, y = batch()
    opt = torch.optim.Adam(cliea.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = cliea.loss(cliea(v, k, km), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    assert (cliea(v, k, km).argmax(-1) == y).all()


def test_ccl_forms_match_their_formulas():
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([0, 2])
    ce = -(
        math.log(math.exp(2) / (math.exp(2) + math.exp(1) + 1))
        + math.log(math.exp(3) / (2 * math.exp(0.5) + math.exp(3)))
    )
    assert ccl_loss(scores, y, "ce").item() == pytest.approx(ce / 2, rel=1e-5)
    paper = -(math.log(math.exp(2) / (math.exp(1) + 1)) + math.log(math.exp(3) / (2 * math.exp(0.5))))
    assert ccl_loss(scores, y, "paper").item() == pytest.approx(paper / 2, rel=1e-5)
    with pytest.raises(ValueError):
        ccl_loss(scores, y, "nope")


def test_pseudo_labels_are_argmax_and_threshold_filters():
    cliea = make_cliea()
    torch.manual_seed(3)
    scores = torch.randn(50, C) * 3
    labels, keep = cliea.pseudo_labels(scores)
    assert labels.dtype == torch.long and torch.equal(labels, scores.argmax(-1))
    assert keep.dtype == torch.bool and keep.all()
    conf = scores.softmax(-1).max(-1).values
    labels, keep = cliea.pseudo_labels(scores, threshold=0.6)
    assert torch.equal(labels, scores.argmax(-1))
    assert torch.equal(keep, conf >= 0.6) and 0 < keep.sum() < 50
    labels, keep = make_cliea(threshold=0.99).pseudo_labels(scores)
    assert torch.equal(keep, conf >= 0.99)


def test_masked_cross_entropy_uses_only_kept():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])
    y = torch.tensor([0, 0, 0])
    keep = torch.tensor([True, False, True])
    full = F.cross_entropy(logits[[0, 2]], y[[0, 2]])
    torch.testing.assert_close(masked_cross_entropy(logits, y, keep), full)
    assert masked_cross_entropy(logits, y, torch.zeros(3, dtype=torch.bool)) == 0
