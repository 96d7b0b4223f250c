"""benchmarks/target_labels.py: the labellers, and the head's labels after the step."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from accuracy_script import load_script
from model_tiny import tiny_config, tiny_foundation
from train_data import make_domain

from kcdp_core.model.kcdp import KCDPModel
from kcdp_core.train.centroid_labels import centroid_labels, refit_head, target_features


def _two_clusters() -> tuple[torch.Tensor, torch.Tensor]:
    """Six points, three near each of two directions, and probabilities over three classes that call the
    third point of the first cluster class 1 and give class 2 a little everywhere."""
    features = torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.9, 0.0], [0.1, 1.0], [-0.1, 1.0], [0.0, 0.9]])
    probs = torch.tensor(
        [
            [0.8, 0.1, 0.1],
            [0.8, 0.1, 0.1],
            [0.35, 0.45, 0.2],
            [0.1, 0.8, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.8, 0.1],
        ]
    )
    return features, probs


def test_centroids_relabel_a_point_by_its_cluster_and_a_class_without_weight_drops_out():
    features, probs = _two_clusters()
    assert probs.argmax(1).tolist() == [0, 0, 1, 1, 1, 1]
    assert centroid_labels(features, probs).tolist() == [0, 0, 0, 1, 1, 1]
    assert centroid_labels(features, probs, steps=1).tolist() == [0, 0, 0, 1, 1, 1]
    # class 0 declared absent (probability 0 everywhere): its cluster goes to the nearest class left
    declared = probs.clone()
    declared[:, 0] = 0
    labels = centroid_labels(features, declared / declared.sum(1, keepdim=True))
    assert 0 not in labels.tolist() and labels[3:].tolist() == [1, 1, 1]


def test_the_head_refit_learns_the_labels_deterministically_and_leaves_the_rest(setup):
    model, style, tmp = setup
    ts = load_script("target_statistics")
    outputs = ts.frozen_outputs(model, style, tmp / "cache")
    found = target_features(model, ts.batches(outputs, 8))
    n = len(outputs["label"])
    assert found.v.shape[0] == found.logits.shape[0] == n
    labels = centroid_labels(found.v, found.logits.softmax(1))
    assert (labels == found.logits.argmax(1)).float().mean() < 0.5  # the head has them to learn
    heads = [copy.deepcopy(model.head) for _ in range(2)]
    fits = [refit_head(head, found, labels, steps=300, lr=1e-2, seed=3) for head in heads]
    assert fits[0] == fits[1] and fits[0] > 0.9
    assert all(torch.equal(a, b) for a, b in zip(*(h.state_dict().values() for h in heads), strict=True))
    assert not all(
        torch.equal(a, b)
        for a, b in zip(heads[0].state_dict().values(), model.head.state_dict().values(), strict=True)
    )


def test_neighbours_take_the_mean_of_the_nearest_predictions():
    tl = load_script("target_labels")
    features, probs = _two_clusters()
    assert tl.neighbours(features, probs, 1).tolist() == [0, 0, 1, 1, 1, 1]  # itself only: the argmax
    assert tl.neighbours(features, probs, 3).tolist() == [0, 0, 0, 1, 1, 1]
    assert tl.neighbours(features, probs, 50).tolist() == [1] * 6  # k past N: every row, the mean's argmax


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("target_labels")
    torch.manual_seed(0)
    model = KCDPModel.from_config(tiny_config(tiny_foundation(tmp))).eval()
    style = make_domain(tmp / "style", fill=(220, 120, 40), per_class=4)
    return model, style, tmp


def test_the_head_labeller_is_the_adapted_models_prediction_and_the_model_is_left_as_it_was(setup):
    model, style, tmp = setup
    tl, ts = load_script("target_labels"), load_script("target_statistics")
    outputs = ts.frozen_outputs(model, style, tmp / "cache")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = tl.after_step(model, outputs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    n = len(outputs["label"])
    assert found["a"].shape == (n, model.config.head.fused_dim)
    assert found["v"].ndim == 2 and found["v"].shape[0] == n
    assert found["cliea"].shape == found["logits"].shape == (n, len(model.labels))
    step = ts.run_variant(model, outputs, ts.VARIANTS[ts.STEP])
    assert (tl.LABELLERS["head"](found).numpy() == step).all()


def test_the_command_scores_every_labeller_per_style(setup, capsys):
    model, style, tmp = setup
    tl = load_script("target_labels")
    ckpt = model.save_pretrained(tmp / "ckpt")
    out = tmp / "scores.json"
    labellers = ["head", "centroids", "centroids in v", "neighbours 5"]
    argv = ["--model", str(ckpt), "--styles", str(style), "--cache", str(tmp / "cache")]
    assert tl.main([*argv, "--labellers", *labellers, "--json", str(out), "--rounds", "50"]) == 0
    report = json.loads(out.read_text())
    scores = report["scores"]["style"]
    assert sorted(scores) == sorted(labellers) and all(0.0 <= s <= 1.0 for s in scores.values())
    assert report["bootstrap"]["head"] == {"interval": [0.0, 0.0], "below": [], "above": []}
    table = capsys.readouterr().out
    assert f"| style ({4 * len(model.labels)}) | {scores['head']:.3f} |" in table
    assert "| change against head (worst style) | +0.0 (style +0.0) |" in table
    assert "| change against head, 95% interval (paired bootstrap over images) | +0.0 to +0.0 |" in table
