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
        # perception split: latents reads the pixels, kadap its latents, the rest kadap's pooled levels
        assert list(graphs["latents"]["inputs"]) == ["pixels"]
        assert list(graphs["kadap"]["inputs"]) == ["latents", "knowledge", "knowledge_mask"]
        assert graphs["kadap"]["inputs"]["latents"] == graphs["latents"]["outputs"]["latents"]
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


def test_what_needs_only_the_pixels_runs_on_the_second_thread(model):
    """A split perception: the VAE encoder (latents) and the face encoder run beside the caption, the
    knowledge and kadap, which run on the calling thread."""
    import threading

    from kcdp_runtime.pipeline import Pipeline

    root, images = model
    pipe = Pipeline.from_pretrained(root / "export")
    if "latents" not in pipe.sessions:
        pytest.skip("perception in one graph")
    threads: dict[str, set[str]] = {}

    class Recorded:
        def __init__(self, name, session):
            self.name, self.session = name, session

        def __getattr__(self, attr):
            return getattr(self.session, attr)

        def run(self, *args, **kwargs):
            threads.setdefault(self.name, set()).add(threading.current_thread().name.split("_")[0])
            return self.session.run(*args, **kwargs)

    before = pipe.run(images, batch_size=1)
    pipe.sessions = {name: Recorded(name, s) for name, s in pipe.sessions.items()}
    pipe.captioner.session = pipe.sessions["image_encoder"]
    after = pipe.run(images, batch_size=1)
    main = threading.current_thread().name
    assert threads == {
        "latents": {"kcdp-side"},
        "face_encoder": {"kcdp-side"},
        "image_encoder": {main},
        "kadap": {main},
        "perception": {main},
    }
    answers = [[(r.get("label"), r.get("scores"), r.get("error")) for r in rs] for rs in (before, after)]
    assert answers[0] == answers[1]


def test_an_export_made_before_the_latents_graph_still_runs(model, tmp_path):
    """Exports before 2026-12-07 begin kadap with the VAE encoder (pixels + k -> pooled levels): the
    runtime still reads them, with the answers of the split layout."""
    import shutil

    import onnx
    from onnx.compose import add_prefix, merge_models

    from kcdp_runtime.pipeline import Pipeline

    root, images = model
    data = json.loads((root / "export" / "manifest.json").read_text())
    if "latents" not in data["graphs"]:
        pytest.skip("perception in one graph")
    old = tmp_path / "export"
    shutil.copytree(root / "export", old)
    vae = add_prefix(onnx.load(old / "latents.onnx"), "vae", rename_inputs=False, rename_outputs=False)
    whole = merge_models(vae, onnx.load(old / "kadap.onnx"), io_map=[("latents", "latents")])
    onnx.save(whole, old / "kadap.onnx")
    (old / "latents.onnx").unlink()
    latents = data["graphs"].pop("latents")
    kadap = data["graphs"]["kadap"]
    rest = {n: d for n, d in kadap["inputs"].items() if n != "latents"}
    kadap["inputs"] = {"pixels": latents["inputs"]["pixels"], **rest}
    data["files"].pop("latents.onnx")
    data["files"].pop("kadap.onnx")  # not checked (a file outside `files` is read as it is)
    (old / "manifest.json").write_text(json.dumps(data))
    before, now = Pipeline.from_pretrained(old), Pipeline.from_pretrained(root / "export")
    assert "latents" not in before.sessions
    assert [i.name for i in before.sessions["kadap"].get_inputs()][0] == "pixels"
    for batch in (1, 3):
        answers = [[(r.get("label"), r.get("scores")) for r in p.run(images, batch_size=batch)] for p in (before, now)]  # fmt: skip
        assert answers[0] == answers[1]


def test_an_export_without_its_latents_graph_says_export_again(model, tmp_path):
    import shutil

    from kcdp_runtime.manifest import ModelError
    from kcdp_runtime.pipeline import Pipeline

    root, _ = model
    data = json.loads((root / "export" / "manifest.json").read_text())
    if "latents" not in data["graphs"]:
        pytest.skip("perception in one graph")
    shutil.copytree(root / "export", tmp_path / "export")
    del data["graphs"]["latents"]
    (tmp_path / "export" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="graphs.latents is missing .*kcdp-export"):
        Pipeline.from_pretrained(tmp_path / "export")


def _face_view_export(model) -> tuple:
    root, images = model
    data = json.loads((root / "export" / "manifest.json").read_text())
    if "face_encoder" not in data["graphs"]:
        pytest.skip("one image graph: no weights to share")
    return root / "export", data, images


def test_the_image_and_face_encoders_store_their_shared_weights_once(model):
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor

    from kcdp_runtime.manifest import sha256

    export, data, _ = _face_view_export(model)
    graphs = data["graphs"]
    shared = graphs["image_encoder"]["external_data"]
    assert shared == graphs["face_encoder"]["external_data"] == "image_weights.data"
    assert data["files"][shared] == sha256(export / shared)  # verify_files checks it
    places, distinct = {}, {}
    for name in ("image_encoder", "face_encoder"):
        path = export / graphs[name]["file"]
        graph = onnx.load(str(path), load_external_data=False).graph
        external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert external, f"{name}: no weights in {shared}"
        inline = sum(len(t.raw_data) for t in graph.initializer if t not in external)
        moved = 0
        places[name] = set()
        for tensor in external:
            info = ExternalDataInfo(tensor)
            assert info.location == shared
            places[name].add((info.offset, info.length))
            load_external_data_for_tensor(tensor, str(export))
            distinct[(tensor.data_type, tuple(tensor.dims), tensor.raw_data)] = info.length
            moved += info.length
        assert inline < moved and path.stat().st_size < moved  # the large tensors left the graph file
    # Each distinct tensor is stored once, and the face encoder (trunk + tail) reads only tensors
    # the image encoder (trunk + tail + embedding head) reads too.
    assert (export / shared).stat().st_size <= sum(distinct.values())
    assert places["face_encoder"] <= places["image_encoder"]
    record = data["shared_weights"][0]
    assert record["file"] == shared and record["saved_bytes"] > 0 and record["stored"] < record["tensors"]


def test_a_missing_or_corrupt_shared_weights_file_is_named(model, tmp_path):
    import shutil

    from kcdp_runtime.manifest import ModelError
    from kcdp_runtime.pipeline import Pipeline

    export, _, _ = _face_view_export(model)
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    (copy / "image_weights.data").write_bytes(b"\0" * 64)
    with pytest.raises(ModelError, match="image_weights.data does not match its sha256"):
        Pipeline.from_pretrained(copy)
    (copy / "image_weights.data").unlink()
    for verify in ("sha256", "presence"):
        with pytest.raises(ModelError, match=r"image_weights.data is missing \(the weights of graphs "):
            Pipeline.from_pretrained(copy, verify=verify)


def test_shared_weights_load_from_the_ort_cache_and_the_triton_repository(model, monkeypatch, tmp_path):
    import shutil

    import onnxruntime as ort

    from kcdp_export.graphs import GraphConfig, TensorSpec
    from kcdp_export.triton import write_repository
    from kcdp_runtime.manifest import graph_digest, load_manifest
    from kcdp_runtime.pipeline import Pipeline
    from kcdp_runtime.sessions import SessionConfig

    export, data, images = _face_view_export(model)
    images = [p for p in images if "broken" not in p]
    manifest = load_manifest(export)
    # the ORT-format copy holds the weights: its key must change with the shared file
    assert graph_digest(manifest, "face_encoder") not in (None, data["files"]["face_encoder.onnx"])
    monkeypatch.setenv("KCDP_CACHE", str(tmp_path / "cache"))
    plain = Pipeline.from_pretrained(export)  # the image and face encoders from their .onnx files
    cached = Pipeline.from_pretrained(export, SessionConfig(uncached_graphs=()))
    assert len(list((tmp_path / "cache" / "ort").glob("*.ort"))) >= 3  # image, face and perception
    for batch in (images, images[:1]):  # a batch, and one image through the batch-1 copies
        a, b = plain.run(batch), cached.run(batch)
        assert [r["label"] for r in a] == [r["label"] for r in b]
        for x, y in zip(a, b, strict=True):
            assert max(abs(x["scores"][k] - y["scores"][k]) for k in x["scores"]) < 1e-5
    configs = []
    for name in ("image_encoder", "face_encoder"):
        spec = data["graphs"][name]
        tensors = [[TensorSpec(n, tuple(d[:-1]), d[-1]) for n, d in spec[k].items()] for k in ("inputs", "outputs")]
        configs.append(GraphConfig(name, None, *tensors, dummy=None))
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    write_repository(copy, configs)
    for name in ("image_encoder", "face_encoder"):
        version = copy / "triton" / name / "1"
        assert (version / "image_weights.data").is_file()
        ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
