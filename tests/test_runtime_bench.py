"""kcdp-bench latency on the tiny export: every ONNX engine, both batch sizes, table, plot, cold start."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from runtime_export import build_fake_export
from runtime_images import BLUE, RED, YELLOW

from kcdp_bench.cli import main
from kcdp_runtime.pipeline import STAGES


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return build_fake_export(tmp_path_factory.mktemp("export") / "fake")


def test_latency_bench_reports_stages_and_appends_results(export, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i, colour in enumerate((RED, BLUE, YELLOW)):
        Image.new("RGB", (32, 32), colour).save(images / f"{i}.png")
    results, figure = tmp_path / "RESULTS.md", tmp_path / "fig.png"
    argv = ["latency", "--model", str(export), "--images", str(images), "--count", "16", "--cold-repeats", "1",
            "--results", str(results), "--figure", str(figure), "--json"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["engines"]) == {"onnx-fp32", "onnx-fp32+memo", "onnx-int8"}
    for name, engine in report["engines"].items():
        assert [r["batch"] for r in engine["runs"]] == [1, 8], name
        for run in engine["runs"]:
            assert run["images"] >= 16 and run["images_per_s"] > 0
            assert set(run["stages"]) == {*STAGES, "total"}
            assert all(0 <= v["p50"] <= v["p95"] for v in run["stages"].values())
            assert run["stages"]["total"]["p50"] > 0
    cold = report["engines"]["onnx-fp32"]["cold"]
    assert 0 < cold["first_result_s"] < 60 and cold["peak_rss_mib"] > 20
    assert "int8" in report["engines"]["onnx-int8"]["note"]
    text = results.read_text()
    assert (
        "| onnx-fp32 | 1 |" in text
        and "| onnx-int8 | 8 |" in text
        and "Machine:" in text
        and "Command: `kcdp-bench latency" in text
    )
    assert figure.stat().st_size > 1000
