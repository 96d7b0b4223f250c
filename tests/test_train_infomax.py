"""Information maximisation on the target (kcdp-adapt's last step): what it trains, what it leaves
alone, that it lowers its objective without labels, and that its shortcut equals the model."""

from __future__ import annotations

import pytest
import torch
from model_tiny import knowledge, tiny_config, tiny_foundation

from kcdp_core.model.kcdp import KCDPModel
from kcdp_core.train.infomax import InfoMaxConfig, frozen_parts, information_maximisation, output
from kcdp_core.train.target_bn import recompute_statistics

FACE = {"image_tail": 2, "face_view": 48}


@pytest.fixture(scope="module")
def foundation(tmp_path_factory):
    return tiny_foundation(tmp_path_factory.mktemp("infomax"))


def _model(foundation, **perception) -> KCDPModel:
    torch.manual_seed(0)
    return KCDPModel.from_config(tiny_config(foundation, perception=perception))


def _batches(model: KCDPModel, n: int = 3, size: int = 8, label: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        k, k_mask = knowledge(model, size)
        batch = {"pixels": torch.rand(size, 3, 64, 64, generator=g), "k": k, "k_mask": k_mask}
        batch["face"] = torch.rand(size, 3, 48, 48, generator=g)
        batch["label"] = torch.full((size,), label)
        out.append(batch)
    return out


@pytest.mark.parametrize("perception", [{}, {"image_embedding": True}, FACE])
def test_the_shortcut_from_frozen_parts_is_the_model(foundation, perception) -> None:
    model = _model(foundation, **perception).eval()
    batch = _batches(model, n=1)[0]
    with torch.no_grad():
        direct = model(batch["pixels"], batch["k"], batch["k_mask"], face=batch["face"]).logits
        torch.testing.assert_close(output(model, frozen_parts(model, batch)).logits, direct)


def test_it_trains_the_fusion_and_tail_only_lowers_its_objective_and_resets_statistics(foundation):
    model = _model(foundation, **FACE)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    batches = _batches(model)
    history = information_maximisation(model, batches, InfoMaxConfig(epochs=6, lr=1e-2, batch_size=8))

    changed = {n for n, t in model.state_dict().items() if not torch.equal(t, before[n])}
    assert any(n.startswith("image_tail.") and "running" not in n for n in changed)
    assert {"fpn.proj.weight", "fpn.norm.0.running_mean", "fpn.extra_norm.running_var"} <= changed
    # the heads, the UNet (LoRA too), the FPN's pooling and the frozen encoders stay as they were
    assert not [n for n in changed if n.split(".")[0] not in ("image_tail", "fpn")]
    assert not [n for n in changed if n.startswith(("fpn.lateral", "fpn.smooth"))]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads  # restored

    # confident per image, spread over the classes as a whole: the objective it descends
    objective = [e - 0.5 * m for e, m in zip(history["entropy"], history["entropy_of_mean"], strict=True)]
    assert len(objective) == 6 and all(b < a for a, b in zip(objective[:-1], objective[1:], strict=True))
    # AdaBN afterwards: the kept statistics are the target's cumulative ones (recomputing them again
    # changes nothing), not the EMA the training batches left
    stats = {n: t.clone() for n, t in model.state_dict().items() if "running" in n}
    parts = [frozen_parts(model, b) for b in batches]
    kept = list(model.statistics_modules().values())
    recompute_statistics(model, parts, within=kept, forward=lambda p: output(model, p))
    for name, value in stats.items():
        torch.testing.assert_close(model.state_dict()[name], value, atol=1e-5, rtol=1e-5)


def test_labels_never_enter_and_the_same_seed_gives_the_same_weights(foundation) -> None:
    results = []
    for label in (0, 5):
        model = _model(foundation, **FACE)
        information_maximisation(model, _batches(model, label=label), InfoMaxConfig(epochs=2, lr=1e-2))
        results.append(model.trained_state_dict())
    assert all(torch.equal(results[0][n], results[1][n]) for n in results[0])
