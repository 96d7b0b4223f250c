"""The runtime on a REAL export (tiny KCDP model -> kcdp-export) against the training code in PyTorch.

Slow (builds a tiny checkpoint and exports it with parity checks): marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    pytest.importorskip("torch")
    exporter = pytest.importorskip("kcdp_export.exporter")
    from kcdp_core.config import tiny
    from kcdp_core.model.foundation import build_tiny_foundation
    from kcdp_core.model.kcdp import KCDPModel

    root = tmp_path_factory.mktemp("real")
    foundation = build_tiny_foundation(root / "foundation")
    KCDPModel.from_config(tiny(foundation=str(foundation))).save_pretrained(root / "ckpt")
    exporter.export_checkpoint(root / "ckpt", root / "export")
    rng = np.random.default_rng(0)
    images = []
    (root / "images").mkdir()
    for i in range(6):
        path = root / "images" / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40 + 4 * i, 48, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    return root, images


def test_runtime_matches_the_training_code_in_pytorch(real, monkeypatch, tmp_path):
    """The export through the runtime's Pipeline against the training code's own path: its retrieval
    captioner, TripletParser, knowledge rule, text encoder and model forward (kcdp_export.calibration)."""
    import torch

    from kcdp_core.model.kcdp import KCDPModel
    from kcdp_export.calibration import load_real_set
    from kcdp_export.graphs import PerceptionModule
    from kcdp_runtime.pipeline import Pipeline

    monkeypatch.setenv("KCDP_CACHE", str(tmp_path))
    root, images = real
    model = KCDPModel.from_pretrained(root / "ckpt").eval()
    reference = load_real_set(model, root / "images", limit=None)
    assert [str(p) for p in reference.paths] == images
    feeds = reference.perception_feeds()
    names = ["pixels", "knowledge", "knowledge_mask", *model.image_inputs]
    with torch.no_grad():
        probs = PerceptionModule(model)(*[torch.from_numpy(feeds[n]) for n in names])[1].numpy()
    onnx = Pipeline.from_pretrained(root / "export").run(images, batch_size=4)
    for r, caption, triplets, p in zip(onnx, reference.captions, reference.triplets, probs, strict=True):
        assert r["caption"] == caption and r["triplets"] == [list(t) for t in triplets]
        assert r["label"] == model.labels[int(p.argmax())]
        assert max(abs(r["scores"][label] - float(q)) for label, q in zip(model.labels, p, strict=True)) < 1e-4
    # Captions handed in: no captioner ran, so the pipeline runs the image encoder itself for the
    # embedding perception takes; the same captions must give the same scores.
    given = Pipeline.from_pretrained(root / "export").run(images, captions=[r["caption"] for r in onnx])
    for a, b in zip(onnx, given, strict=True):
        assert max(abs(a["scores"][k] - b["scores"][k]) for k in a["scores"]) < 1e-5


NO_TORCH = (
    "import sys; sys.modules['torch'] = None; from kcdp_runtime.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_kcdp_infer_on_a_real_export_without_torch(real, tmp_path):
    root, images = real
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *images[:2], str(Path(images[0]).parent / "missing.png"),
         "--model", str(root / "export"), "--json"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "KCDP_CACHE": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [set(x) for x in lines[:2]] == [
        {"image", "label", "scores", "caption", "triplets", "latency_ms"}
    ] * 2
    assert "no such file" in lines[2]["error"]
