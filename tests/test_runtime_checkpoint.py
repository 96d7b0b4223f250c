"""`kcdp-infer --model CKPT`: a training checkpoint through the runtime's stages in PyTorch, against its
export (same labels, scores within 1e-3, same captions, triplets and errors); without torch, the
message that says to export it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kcdp_runtime.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(
    scope="module",
    params=[{"image_tail": 0}, {"image_tail": 2}, {"image_tail": 2, "face_view": 48}],
    ids=["frozen-embedding", "image-tail", "face-view"],
)
def model(tmp_path_factory, request):
    exporter = pytest.importorskip("kcdp_export.exporter")
    import torch

    from kcdp_core.config import tiny
    from kcdp_core.model.foundation import build_tiny_foundation
    from kcdp_core.model.kcdp import KCDPModel

    root = tmp_path_factory.mktemp("ckpt")
    foundation = build_tiny_foundation(root / "foundation")
    torch.manual_seed(0)
    config = tiny(foundation=str(foundation)).replace(perception=request.param)
    net = KCDPModel.from_config(config)
    with torch.no_grad():  # LoRA B starts at zero: give it weights, so the merge is exercised
        for name, p in net.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)
            elif name.startswith("image_tail."):  # a trained tail differs from the frozen stages
                p.add_(torch.randn_like(p) * 0.05)
    net.save_pretrained(root / "ckpt")
    exporter.export_checkpoint(root / "ckpt", root / "export")
    rng = np.random.default_rng(1)
    images = []
    for i in range(5):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (36 + 5 * i, 44, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    (root / "broken.png").write_bytes(b"not a png")
    images.insert(2, str(root / "broken.png"))
    return root, images


def _run(capsys, args: list[str]) -> tuple[int, list[dict]]:
    code = main(args)
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.strip()]


def test_checkpoint_matches_its_export(model, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KCDP_CACHE", str(tmp_path))
    root, images = model
    code_c, ckpt = _run(capsys, [*images, "--model", str(root / "ckpt"), "--json", "--threads", "1"])
    code_e, export = _run(capsys, [*images, "--model", str(root / "export"), "--json", "--threads", "1"])
    assert code_c == code_e == 1  # the broken image fails in both, the others run
    assert len(ckpt) == len(export) == len(images)
    for a, b in zip(ckpt, export, strict=True):
        assert a["image"] == b["image"]
        if "error" in b:
            assert a == b
            continue
        assert set(a) == set(b) == {"image", "label", "scores", "caption", "triplets", "latency_ms"}
        assert a["label"] == b["label"] and a["caption"] == b["caption"] and a["triplets"] == b["triplets"]
        assert max(abs(a["scores"][k] - b["scores"][k]) for k in b["scores"]) < 1e-3
        assert set(a["latency_ms"]) == set(b["latency_ms"])


def test_kcdp_bench_times_the_checkpoint_through_the_runtime_pipeline(model, capsys, monkeypatch, tmp_path):
    """kcdp-bench latency --ckpt: the torch-eager engine is the checkpoint opened as kcdp-infer opens it,
    timed in a process of its own, and its cold start is `kcdp-infer --model CKPT`."""
    import shutil

    from kcdp_bench.cli import main as bench
    from kcdp_runtime.pipeline import STAGES

    monkeypatch.setenv("KCDP_CACHE", str(tmp_path / "cache"))
    root, images = model
    folder = tmp_path / "images"
    folder.mkdir()
    for path in images:
        if "broken" not in path:
            shutil.copy2(path, folder)
    argv = ["latency", "--model", str(root / "export"), "--ckpt", str(root / "ckpt"), "--images", str(folder),
            "--no-int8", "--no-memo", "--batch-sizes", "1", "--count", "4", "--cold-repeats", "1",
            "--threads", "1", "--results", "-", "--figure", str(tmp_path / "fig.png"), "--json"]  # fmt: skip
    assert bench(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["engines"]) == {"onnx-fp32", "torch-eager"}
    (run,) = report["engines"]["torch-eager"]["runs"]
    assert run["batch"] == 1 and run["images"] >= 4 and set(run["stages"]) == {*STAGES, "total"}
    assert run["stages"]["perception"]["p50"] > 0 and run["stages"]["text_encoder"]["p50"] > 0  # memo off
    assert report["engines"]["torch-eager"]["cold"]["first_result_s"] > 0
    assert report["speedups"]["onnx-fp32 vs torch-eager"] > 0


def test_checkpoint_best_subfolder_and_plain_output(model, capsys, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("KCDP_CACHE", str(tmp_path / "cache"))
    root, images = model
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy2(root / "ckpt" / f, run / "best" / f)
    shutil.copy2(root / "ckpt" / "config.json", run / "config.json")  # "last" has no weights here
    assert main([images[0], "--model", str(run)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(images[0]) and "caption:" in captured.out


def test_broken_checkpoint_is_a_usage_error(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"preset": "tiny"}))
    assert main(["x.png", "--model", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "is a training checkpoint" in err and "kcdp-export --ckpt" in err


NO_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from kcdp_runtime.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_torch_the_message_says_export_it(model):
    root, images = model
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, images[0], "--model", str(root / "ckpt")],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )  # fmt: skip
    assert proc.returncode == 2
    assert "is a training checkpoint" in proc.stderr and "kcdp-export --ckpt" in proc.stderr


def test_the_image_view_flows_from_the_image_encoder_graph_into_perception(model):
    root, _ = model
    graphs = json.loads((root / "export" / "manifest.json").read_text())["graphs"]
    encoder, perception = graphs["image_encoder"]["outputs"], graphs["perception"]["inputs"]
    if "image_features" in encoder:  # the image tail: one trunk pass gives both
        assert (
            perception["image_features"] == encoder["image_features"] and "image_embedding" not in perception
        )
    else:
        assert perception["image_embedding"] == encoder["embedding"]
    face = graphs.get("face_encoder")
    assert (face is not None) == ("face_features" in perception) == ("kadap" in graphs)
    if face is not None:  # a graph of its own, beside the image encoder: the same width as its features
        assert list(graphs["image_encoder"]["inputs"]) == ["pixels"] and list(face["inputs"]) == ["face"]
        assert perception["face_features"] == face["outputs"]["face_features"] == encoder["image_features"]
        # perception split: kadap reads the pixels, the rest starts from its pooled levels
        assert list(graphs["kadap"]["inputs"]) == ["pixels", "knowledge", "knowledge_mask"]
        assert "pixels" not in perception
        assert perception["pooled_levels"] == graphs["kadap"]["outputs"]["pooled_levels"]


def test_an_export_of_a_face_view_model_without_its_face_encoder_says_export_again(model, tmp_path):
    import shutil

    from kcdp_runtime.manifest import ModelError
    from kcdp_runtime.pipeline import Pipeline

    root, images = model
    data = json.loads((root / "export" / "manifest.json").read_text())
    if not data["preprocessing"].get("face_view"):
        pytest.skip("this model reads no face view")
    shutil.copytree(root / "export", tmp_path / "export")
    del data["graphs"]["face_encoder"]
    (tmp_path / "export" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="graphs.face_encoder is missing .*kcdp-export"):
        Pipeline.from_pretrained(tmp_path / "export")
