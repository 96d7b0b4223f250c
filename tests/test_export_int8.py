"""kcdp-export --precision int8: calibrated on real images, accuracy change reported."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from export_fixtures import tiny_export_inputs  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from kcdp_export.exporter import ExportOptions, export_checkpoint

    root = tmp_path_factory.mktemp("export8")
    ckpt, _, calib = tiny_export_inputs(root)
    out = root / "export"
    # A random tiny model has near-tied logits: the floors are the CLI's job on real models; here the
    # test asserts the figures are measured and reported.
    # keep_text_encoder: the dynamic-int8 text encoder is tested too (by default it is left out, the
    # bank knowledge replacing it).
    options = ExportOptions(
        precision="int8", calibration=calib, int8_max_drop=100.0, min_agreement=0.0, keep_text_encoder=True
    )
    manifest = export_checkpoint(ckpt, out, options)
    return {"out": out, "manifest": manifest}


def test_int8_graphs_are_quantized(exported):
    import onnx

    out = exported["out"]
    ops = {
        n: {node.op_type for node in onnx.load(str(out / f"{n}.onnx")).graph.node}
        for n in ("text_encoder", "image_encoder", "perception")
    }
    assert "DynamicQuantizeLinear" in ops["text_encoder"] or "MatMulInteger" in ops["text_encoder"]
    for name in ("image_encoder", "perception"):  # static QDQ, calibrated
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops[name]
        onnx.checker.check_model(str(out / f"{name}.onnx"), full_check=True)


def test_int8_reports_accuracy_change_and_parity(exported):
    m = exported["manifest"]
    assert m["precision"] == "int8"
    assert {g["precision"] for g in m["graphs"].values()} <= {"int8", "fp32"}
    assert m["graphs"]["perception"]["precision"] == "int8"
    change = m["int8_accuracy_change"]
    assert change["n_images"] == 8 and change["measured_on"].startswith("calibration images")
    assert 0.0 <= change["fp32_accuracy"] <= 1.0 and 0.0 <= change["int8_accuracy"] <= 1.0
    assert change["change_points"] == pytest.approx(100 * (change["int8_accuracy"] - change["fp32_accuracy"]))
    assert 0.0 <= change["label_agreement_with_fp32"] <= 1.0
    p = m["parity"]["perception"]
    assert p["precision"] == "int8" and p["inputs"] == "random+real" and p["label_agreement"] is not None
    assert 0 < p["max_abs_diff"] < 1.0  # quantised: not bit-exact, but close
    assert p["fp32"]["outputs"]["logits"] <= 1e-4 and p["fp32"]["label_agreement"] == 1.0
    assert json.loads((exported["out"] / "manifest.json").read_text())["int8_accuracy_change"] == change
    # The bank knowledge ships as per-channel int8, close to the fp32 text encoder's k.
    know = m["caption_bank"]["knowledge"]
    assert know["dtype"] == "int8" and know["text_encoder_shipped"] and 0 < know["max_abs_diff"] < 0.1


def test_a_split_perception_is_quantized_graph_by_graph_and_checked_end_to_end(tmp_path):
    """A model with a face view: latents, kadap and the rest of perception each calibrated on what the
    graph before it computes from the real images, and the chain checked end to end."""
    import onnx

    from kcdp_export.exporter import ExportOptions, export_checkpoint

    ckpt, _, calib = tiny_export_inputs(tmp_path, perception={"image_tail": 2, "face_view": 48})
    options = ExportOptions(precision="int8", calibration=calib, int8_max_drop=100.0, min_agreement=0.0)
    m = export_checkpoint(ckpt, tmp_path / "export", options)
    graphs = m["graphs"]
    assert graphs["kadap"]["inputs"]["latents"] == graphs["latents"]["outputs"]["latents"]
    for name in ("latents", "kadap", "perception"):
        assert graphs[name]["precision"] == "int8" and m["parity"][name]["passed"]
        ops = {node.op_type for node in onnx.load(str(tmp_path / "export" / f"{name}.onnx")).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert m["parity"]["latents"]["n_real"] == m["parity"]["kadap"]["n_real"] == 8
    int8 = m["end_to_end"]["int8"]
    assert int8["n"] == 8 and int8["graphs"]["latents"] == "int8" and 0.0 <= int8["label_agreement"] <= 1.0
