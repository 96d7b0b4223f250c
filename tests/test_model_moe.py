import pytest
import torch
from torch.nn import functional as F

from kcdp_core.model.moe import MoE


def naive_moe(moe: MoE, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample reference: route one sample at a time, run only its chosen experts."""
    outs, chosen_all = [], []
    for x in a:
        probs = torch.softmax(moe.router(x), dim=-1)
        order = sorted(range(moe.num_experts), key=lambda e: -float(probs[e]))[: moe.top_k]
        y = torch.zeros(moe.b2.shape[1])
        for e in order:
            h = F.gelu(x @ moe.w1[e] + moe.b1[e])
            y = y + probs[e] * (h @ moe.w2[e] + moe.b2[e])
        outs.append(y)
        chosen = torch.zeros(moe.num_experts)
        chosen[order] = 1
        chosen_all.append(chosen)
    return torch.stack(outs), torch.stack(chosen_all)


@pytest.mark.parametrize(("experts", "top_k"), [(4, 2), (6, 1), (5, 3)])
def test_batched_equals_naive_reference(experts, top_k):
    torch.manual_seed(experts * 10 + top_k)
    moe = MoE(12, 7, num_experts=experts, top_k=top_k, hidden=16).eval()
    a = torch.randn(9, 12)
    with torch.no_grad():
        logits, balance, probs = moe(a)
        ref, chosen = naive_moe(moe, a)
    assert logits.shape == (9, 7) and probs.shape == (9, experts)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(9))
    # Balance term from the reference's choices.
    f = chosen.mean(0) / top_k
    torch.testing.assert_close(balance, experts * (f * probs.mean(0)).sum())


def test_router_picks_exactly_k_experts():
    torch.manual_seed(0)
    moe = MoE(8, 3, num_experts=5, top_k=2, hidden=8)
    a = torch.randn(32, 8)
    probs, gates, chosen = moe.route(a)
    assert torch.equal((gates > 0).sum(-1), torch.full((32,), 2))
    assert torch.equal(chosen.sum(-1), torch.full((32,), 2.0))
    # The gates are the largest router probabilities, unnormalised (paper Eq. 6).
    top = probs.topk(2, dim=-1).values
    torch.testing.assert_close(gates.sort(-1, descending=True).values[:, :2], top)
    assert (gates.sum(-1) < 1).all()


def test_balance_loss_is_one_when_uniform_and_grows_with_collapse():
    moe = MoE(4, 2, num_experts=4, top_k=1, hidden=4)
    n = 8
    uniform = torch.full((n, 4), 0.25)
    spread = torch.eye(4).repeat(2, 1)  # each expert chosen twice
    torch.testing.assert_close(moe.balance_loss(uniform, spread), torch.tensor(1.0))
    collapsed_probs = torch.tensor([[0.97, 0.01, 0.01, 0.01]]).repeat(n, 1)
    collapsed = torch.zeros(n, 4)
    collapsed[:, 0] = 1
    assert moe.balance_loss(collapsed_probs, collapsed) > 3.5


def test_top_k_validated():
    with pytest.raises(ValueError, match="top_k"):
        MoE(4, 2, num_experts=2, top_k=3)


def test_moe_gradients_reach_router_and_experts():
    torch.manual_seed(1)
    moe = MoE(6, 3, num_experts=4, top_k=2, hidden=8)
    a = torch.randn(5, 6)
    logits, balance, _ = moe(a)
    (logits.square().mean() + balance).backward()
    assert moe.router.weight.grad.abs().sum() > 0
    used = moe.route(a)[2].sum(0) > 0
    # An expert gets gradient exactly when some sample routed to it.
    assert torch.equal(moe.w2.grad.flatten(1).abs().sum(1) > 0, used)
