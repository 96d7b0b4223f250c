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



def test_latency_bench_with_results_dash_writes_no_file(export, tmp_path, capsys, monkeypatch):
    import kcdp_bench.latency as latency

    monkeypatch.setattr(latency, "FIGURES", tmp_path / "figures")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), RED).save(images / "red.png")
    argv = ["latency", "--model", str(export), "--images", str(images), "--count", "2", "--cold-repeats", "1",
            "--batch-sizes", "1", "--no-int8", "--no-memo", "--results", "-", "--json"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["figure"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]

def test_accuracy_bench_scores_alone_and_in_packs(export, tmp_path, capsys):
    colours = {"anger": RED, "sadness": BLUE, "happiness": YELLOW}
    for label, colour in colours.items():
        (tmp_path / label).mkdir()
        for n in range(6):
            shade = tuple(max(0, v - 5 * n) for v in colour)
            Image.new("RGB", (40, 30), shade).save(tmp_path / label / f"{n}.png")
    assert main(["accuracy", "--model", str(export), "--data", str(tmp_path)]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["images"] == 18 and plain["accuracy"] == 1.0 and plain["macro_f1"] == 1.0
    assert main(["accuracy", "--model", str(export), "--data", str(tmp_path), "--pack", "all"]) == 0
    packed = json.loads(capsys.readouterr().out)
    assert packed["pack"] == "all" and packed["packs_answered_alone"] == 0
    assert packed["accuracy_alone"] == plain["accuracy"] and packed["macro_f1"] == 1.0
    assert main(["accuracy", "--model", str(export), "--data", str(tmp_path), "--pack", "8"]) == 0
    small = json.loads(capsys.readouterr().out)  # two packs of 9: below 16, each answered alone
    assert small["pack"] == 8 and small["packs_answered_alone"] == 18 and small["accuracy"] == 1.0
    with pytest.raises(SystemExit):
        main(["accuracy", "--model", str(export), "--data", str(tmp_path), "--pack", "0"])
    assert "a pack size is a whole number of images or 'all', got '0'" in capsys.readouterr().err
