"""The embedded default model (runtime/default_model): loads with its sha256 checks, and labels the
four example images of the README as their names say."""

from __future__ import annotations

import json
from pathlib import Path

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
