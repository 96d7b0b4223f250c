"""The embedded default model (runtime/default_model): loads with its sha256 checks, and labels the
four example images of the README as their names say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kcdp_runtime.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "runtime" / "examples"
EXPECTED = {"grinning": "happiness", "angry": "anger", "crying": "sadness", "screaming": "fear"}


def test_default_model_labels_the_examples(capsys) -> None:
    paths = [str(EXAMPLES / f"{name}.png") for name in EXPECTED]
    assert main([*paths, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert {Path(r["image"]).stem: r["label"] for r in rows} == EXPECTED
    for row in rows:
        assert abs(sum(row["scores"].values()) - 1.0) < 1e-4
        assert row["caption"] and row["latency_ms"]["total"] > 0


def test_the_committed_checkpoint_is_the_shipped_export(capsys) -> None:
    """kcdp_core/assets/default_model (fp16 on disk, run in PyTorch) against its int8 export: same labels
    on the examples, scores within int8 rounding."""
    pytest.importorskip("torch")
    paths = [str(EXAMPLES / f"{name}.png") for name in EXPECTED]
    ckpt = Path(__file__).resolve().parent.parent / "kcdp_core" / "assets" / "default_model"
    runs = {}
    for model in ([], ["--model", str(ckpt)]):
        assert main([*paths, "--json", *model]) == 0
        runs[bool(model)] = [
            json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()
        ]
    for export, eager in zip(runs[False], runs[True], strict=True):
        assert export["label"] == eager["label"] and export["caption"] == eager["caption"]
        assert max(abs(export["scores"][k] - eager["scores"][k]) for k in export["scores"]) < 0.1
