"""benchmarks/target_statistics.py: the cached frozen outputs, each variant's statistics, the table."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from accuracy_script import load_script
from model_tiny import tiny_config, tiny_foundation
from torch import nn
from train_data import make_domain

from kcdp_core.model.image_tail import ImageEncoderOutputs
from kcdp_core.model.kcdp import KCDPModel
from kcdp_core.train.datasets import file_hash
from kcdp_core.train.target_bn import batch_norms, recompute_statistics


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("target_statistics")
    torch.manual_seed(0)
    model = KCDPModel.from_config(tiny_config(tiny_foundation(tmp))).eval()
    style = make_domain(tmp / "style", fill=(40, 160, 220), per_class=5)
    return load_script("target_statistics"), model, style, tmp / "cache"


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_cached_outputs_predict_what_the_model_does_and_are_read_back(setup):
    ts, model, style, cache = setup
    outputs = ts.frozen_outputs(model, style, cache)
    assert len(list(cache.glob("style-*.safetensors"))) == 1
    again = ts.frozen_outputs(model, style, cache)  # read from the cache
    assert all(torch.equal(outputs[k], again[k]) for k in outputs)
    # kcdp-adapt's order (by content hash), not the class folders' (batches of one class each)
    by_hash = sorted(style.rglob("*.png"), key=lambda p: (file_hash(p), str(p)))
    assert outputs["label"].tolist() == [model.labels.index(p.parent.name) for p in by_hash]

    with torch.no_grad():
        logits = model(outputs["pixels"], outputs["k"], outputs["k_mask"], face=outputs.get("face")).logits
    assert (ts.run_variant(model, outputs, ts.VARIANTS["none"]) == logits.argmax(-1).numpy()).all()


def test_the_step_is_kcdp_adapts_and_the_model_is_left_as_it_was(setup):
    ts, model, style, cache = setup
    outputs = ts.frozen_outputs(model, style, cache)
    before = _state(model)
    predicted = ts.run_variant(model, outputs, ts.VARIANTS["fpn+tail"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    # the same statistics through the model's whole forward, as kcdp-adapt's step computes them
    adapted = KCDPModel.from_config(model.config)
    adapted.load_state_dict(model.state_dict())
    adapted.eval()
    batches = list(ts.batches({k: v for k, v in outputs.items() if k != "pooled"}, model.config.train.batch_size))
    assert recompute_statistics(adapted, batches, within=adapted.statistics_modules().values()) == 35
    fpn_means = [bn.running_mean for bn in batch_norms(adapted.fpn)]
    assert fpn_means and all(m.abs().sum() > 0 for m in fpn_means)  # moved from the fresh zeros
    with torch.no_grad():
        logits = adapted(outputs["pixels"], outputs["k"], outputs["k_mask"], face=outputs.get("face")).logits
    assert (predicted == logits.argmax(-1).numpy()).all()


def test_the_table_compares_every_variant_with_the_step():
    ts = load_script("target_statistics")
    scores = {
        "a": {"none": 0.30, "fpn+tail": 0.50, "tail": 0.55},
        "b": {"none": 0.60, "fpn+tail": 0.40, "tail": 0.30},
    }
    table = ts.format_table(scores, ["none", "fpn+tail", "tail"], {"a": 10, "b": 20})
    assert "| a (10) | 0.300 | 0.500 | 0.550 |" in table
    assert "| mean | 0.450 | 0.450 | 0.425 |" in table
    # mean change in points, then the style that loses most against the step
    assert "| change against fpn+tail (worst style) | +0.0 (a -20.0) | +0.0 (a +0.0) | -2.5 (b -10.0) |" in table


def test_an_encoder_scope_it_does_not_know_is_refused(setup):
    ts, model, _, _ = setup
    with pytest.raises(ValueError, match="unknown encoder scope"):
        ts.encoder_norms(model.image_encoder, "everything", 1)


def test_the_tail_per_view_keeps_the_whole_images_statistics_apart_from_the_faces(tmp_path):
    ts = load_script("target_statistics")
    torch.manual_seed(0)
    config = tiny_config(tiny_foundation(tmp_path), perception={"image_tail": 2, "face_view": 48})
    model = KCDPModel.from_config(config).eval()
    for stage in model.image_tail.stages:  # the tiny encoder's GroupNorms as the real one's BatchNorms
        stage[1] = nn.BatchNorm2d(stage[1].num_channels).eval()
    style = make_domain(tmp_path / "style", fill=(200, 60, 90), per_class=3)
    outputs = ts.frozen_outputs(model, style, tmp_path / "cache")
    size = model.config.train.batch_size

    # the tail's statistics over the whole images alone, as the variant should leave them in the model
    alone = copy.deepcopy(model.image_tail).eval()
    branch = ImageEncoderOutputs(model.image_encoder, alone)
    recompute_statistics(alone, ts.batches(outputs, size), forward=lambda b: branch.features(b["pixels"]))
    whole = batch_norms(alone)[0].running_mean

    before = _state(model)
    for name, same in (("fpn+tail per view", True), ("fpn+tail", False)):
        with ts.adapted(model, outputs, ts.VARIANTS[name]):
            assert torch.allclose(batch_norms(model.image_tail)[0].running_mean, whole, atol=1e-5) is same
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert ts.run_variant(model, outputs, ts.VARIANTS["fpn+tail per view"]).shape == (len(outputs["label"]),)


def test_the_tail_per_view_is_refused_without_a_face_view(setup):
    ts, model, style, cache = setup
    with pytest.raises(ValueError, match="face view"):
        ts.run_variant(model, ts.frozen_outputs(model, style, cache), ts.VARIANTS["fpn+tail per view"])


def test_the_paired_bootstrap_tells_a_sure_change_from_none():
    ts = load_script("target_statistics")
    labels = ("anger", "happiness", "sadness")
    truth = np.array([0, 1, 2] * 20)
    wrong = (truth + 1) % 3
    half = np.where(np.arange(60) < 30, truth, wrong)
    truths = {"a": truth, "b": truth}
    predictions = {
        "a": {"ref": truth, "same": truth, "worse": wrong, "mixed": half},
        "b": {"ref": half, "same": half, "worse": half, "mixed": truth},
    }
    sure = ts.paired_bootstrap(truths, predictions, "ref", labels, rounds=200)
    assert sure["same"] == {"interval": (0.0, 0.0), "below": [], "above": []}
    assert sure["worse"]["below"] == ["a"] and sure["worse"]["above"] == []
    assert sure["worse"]["interval"][1] < 0  # a whole style wrong: the mean surely falls
    assert sure["mixed"]["below"] == ["a"] and sure["mixed"]["above"] == ["b"]
    assert sure["mixed"]["interval"][0] < 0 < sure["mixed"]["interval"][1]  # one up, one down: not sure
    rows = ts.format_bootstrap(sure, ["ref", "same", "worse"], "ref")
    assert "| styles surely below / above it (97.5% of the draws) | 0 / 0 | 0 / 0 | 1 / 0 |" in rows
