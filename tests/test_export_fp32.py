"""kcdp-export on a tiny checkpoint: fp32 parity, manifest, Triton repository, torch-free reload."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kcdp_core.portable.labels import EMOJI7

pytest.importorskip("torch")

from export_fixtures import tiny_export_inputs  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from kcdp_export.cli import main

    root = tmp_path_factory.mktemp("export32")
    ckpt, lora_effect, calib = tiny_export_inputs(root)
    out = root / "export"
    # --keep-text-encoder: these tests also run the text encoder graph; test_runtime_parity covers the
    # default (bank knowledge only, no text encoder).
    args = [
        "--ckpt",
        str(ckpt),
        "--out",
        str(out),
        "--calibration",
        str(calib),
        "--triton",
        "--keep-text-encoder",
    ]
    code = main(args)
    assert code == 0
    return {"root": root, "ckpt": ckpt, "calib": calib, "out": out, "lora_effect": lora_effect}


def test_fp32_parity_within_1e4_and_identical_labels(exported):
    manifest = json.loads((exported["out"] / "manifest.json").read_text())
    assert exported["lora_effect"] > 1e-3  # the LoRA changes the logits, so the merge check means something
    merge = manifest["lora_merge"]
    assert merge["merged"] and merge["lora_layers"] > 0 and merge["max_abs_diff"] <= 1e-4
    parity = manifest["parity"]
    assert set(parity) == {"text_encoder", "image_encoder", "perception"}
    for figures in parity.values():
        assert figures["precision"] == "fp32" and figures["passed"]
        assert figures["inputs"] == "random+real" and figures["n_real"] > 0 and figures["n_random"] == 4
        assert max(figures["outputs"].values()) <= 1e-4
    # The shipped text encoder went through onnxruntime's transformer optimizer, and still holds parity.
    assert parity["text_encoder"]["transformer_optimizer"]["SkipLayerNormalization"] > 0
    assert parity["perception"]["outputs"]["logits"] <= 1e-4
    assert parity["perception"]["label_agreement"] == 1.0
    assert parity["perception"]["n_real"] == 8  # 8 PNGs; the broken file is skipped with a message
    e2e = manifest["end_to_end"]["fp32"]
    assert e2e["label_agreement"] == 1.0 and e2e["caption_agreement"] == 1.0 and e2e["n"] == 8


def test_manifest_contract(exported):
    from kcdp_runtime.manifest import load_manifest, sha256

    out = exported["out"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "kcdp-export" and m["format_version"] == 1 and m["package_version"] == "0.1.0"
    assert m["preset"] == "tiny" and m["labels"] == list(EMOJI7) and m["precision"] == "fp32"
    assert m["preprocessing"]["image_size"] == 64 and m["preprocessing"]["resize_filter"] == "bicubic"
    assert m["preprocessing"]["pixel_range"] == [0, 1] and m["preprocessing"]["layout"] == "NCHW"
    assert m["knowledge"]["captioner"] == "retrieval" and m["knowledge"]["text_length"] == 8
    assert m["knowledge"]["parser"]["version"]
    assert m["tokenizer"] == {"folder": "tokenizer", "file": "tokenizer/tokenizer.json", "max_length": 8}
    assert m["prompts"]["per_label"][0] == "A anger photo of"
    assert m["caption_bank"]["captions"] == "caption_bank/captions.jsonl"
    # Top-1 retrieval: every bank caption's triplets are parsed at export, by the training parser.
    from kcdp_core.portable.triplets import PARSER_VERSION, TripletParser

    assert m["caption_bank"]["triplets_parser"] == PARSER_VERSION == m["knowledge"]["parser"]["version"]
    rows = [json.loads(line) for line in (out / "caption_bank/captions.jsonl").read_text().splitlines()]
    assert len(rows) == m["caption_bank"]["size"] and all("triplets" in r for r in rows)
    parser = TripletParser()
    assert [r["triplets"] for r in rows[:5]] == [
        [list(t) for t in parser.parse(r["caption"])] for r in rows[:5]
    ]
    # Every bank caption's k, precomputed with the fp32 text encoder graph (stored exactly in fp32).
    know = m["caption_bank"]["knowledge"]
    assert know["file"] == "caption_bank/knowledge.safetensors" and know["dtype"] == "fp32"
    assert know["rows"] == m["caption_bank"]["size"] and know["max_abs_diff"] == 0.0
    assert know["text_encoder_shipped"] and m["knowledge"]["parser"]["required"] is False
    g = m["graphs"]
    assert g["text_encoder"]["inputs"]["input_ids"] == ["batch", 8, "int64"]
    assert g["text_encoder"]["outputs"]["token_states"] == ["batch", 8, 32, "float32"]
    assert g["image_encoder"]["inputs"]["pixels"] == ["batch", 3, 64, 64, "float32"]
    assert g["perception"]["inputs"]["knowledge"] == ["batch", 16, 32, "float32"]
    # The model fuses the image encoder's embedding into v: perception takes it as an input.
    assert g["perception"]["inputs"]["image_embedding"] == g["image_encoder"]["outputs"]["embedding"]
    assert g["perception"]["outputs"]["logits"] == ["batch", 7, "float32"]
    assert all(entry["precision"] == "fp32" for entry in g.values())
    for rel in (
        "text_encoder.onnx",
        "image_encoder.onnx",
        "perception.onnx",
        "tokenizer/tokenizer.json",
        "caption_bank/embeddings.safetensors",
        "caption_bank/knowledge.safetensors",
        "triton/perception/config.pbtxt",
    ):
        assert m["files"][rel] == sha256(out / rel)
    assert load_manifest(out).files == m["files"]  # every listed file checked against its sha256
    assert any("broken.png" in s for s in m["calibration"]["skipped"])
    assert m["timings_s"]["export_perception"] > 0


def test_graphs_have_opset_17_dynamic_batch_and_pass_full_check(exported):
    import onnx

    for name in ("text_encoder", "image_encoder", "perception"):
        path = exported["out"] / f"{name}.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        for tensor in model.graph.input:
            assert tensor.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_triton_repository(exported):
    repo = exported["out"] / "triton"
    for name in ("text_encoder", "image_encoder", "perception"):
        config = (repo / name / "config.pbtxt").read_text()
        assert f'name: "{name}"' in config and 'platform: "onnxruntime_onnx"' in config
        assert "max_batch_size: 32" in config
        assert (repo / name / "1" / "model.onnx").read_bytes() == (
            exported["out"] / f"{name}.onnx"
        ).read_bytes()
    perception = (repo / "perception" / "config.pbtxt").read_text()
    assert (
        'name: "knowledge"' in perception and "dims: [ 16, 32 ]" in perception and "dims: [ 7 ]" in perception
    )


TORCH_FREE = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    import json
    from pathlib import Path
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer
    from kcdp_core.portable.images import load_pixels
    from kcdp_core.portable.assemble import assemble_knowledge
    from kcdp_core.portable.caption_bank import CaptionBank
    from kcdp_core.portable.triplets import TripletParser

    out, images = Path(sys.argv[1]), sys.argv[2:]
    m = json.loads((out / "manifest.json").read_text())
    sess = {n: ort.InferenceSession(str(out / g["file"]), providers=["CPUExecutionProvider"]) for n, g in m["graphs"].items()}
    tok = Tokenizer.from_file(str(out / m["tokenizer"]["file"]))
    bank = CaptionBank.load(out / "caption_bank")
    parser = TripletParser(m["knowledge"]["parser"]["model"])
    pixels = np.stack([load_pixels(p, m["preprocessing"]["image_size"]) for p in images])
    emb = sess["image_encoder"].run(None, {"pixels": pixels})[0]
    idx, _ = bank.search(emb, m["knowledge"]["retrieval_top_k"])
    captions = [m["knowledge"]["retrieval_separator"].join(bank.captions[i] for i in row) for row in idx]
    trips = [t[: m["knowledge"]["max_triplets"]] for t in parser.parse_many(captions)]
    texts = captions + [" ".join(t) for ts in trips for t in ts]
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], np.int64)
    mask = np.array([e.attention_mask for e in enc], np.int64)
    states = sess["text_encoder"].run(None, {"input_ids": ids, "attention_mask": mask})[0]
    ks, ms, off = [], [], len(captions)
    for i, ts in enumerate(trips):
        k, km = assemble_knowledge(states[i], mask[i].astype(np.float32), states[off:off + len(ts)],
                                   mask[off:off + len(ts)].astype(np.float32))
        ks.append(k); ms.append(km); off += len(ts)
    feed = {"pixels": pixels, "knowledge": np.stack(ks), "knowledge_mask": np.stack(ms), "image_embedding": emb}
    logits, probs, feats = sess["perception"].run(None, feed)
    assert "torch" not in sys.modules or sys.modules["torch"] is None
    print(json.dumps({"labels": logits.argmax(-1).tolist(), "captions": captions,
                      "prob_sums": probs.sum(-1).tolist()}))
    """
)


def test_export_runs_in_onnxruntime_without_torch(exported):
    import torch

    from kcdp_core.model.kcdp import KCDPModel
    from kcdp_export.calibration import load_real_set

    images = sorted(str(p) for p in exported["calib"].rglob("face*.png"))
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(exported["out"]), *images],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got["prob_sums"], 1.0, atol=1e-5)
    # The same images through the PyTorch checkpoint (LoRA unmerged): same captions, same labels.
    model = KCDPModel.from_pretrained(exported["ckpt"]).eval()
    real = load_real_set(model, exported["calib"], limit=None)
    order = [str(p) for p in real.paths]
    with torch.no_grad():
        logits = model(*(torch.from_numpy(a) for a in real.perception_feeds().values())).logits
    expected = {p: int(label) for p, label in zip(order, logits.argmax(-1), strict=True)}
    assert got["labels"] == [expected[p] for p in images]
    assert got["captions"] == [real.captions[order.index(p)] for p in images]


def test_classes_that_are_not_labels_are_refused_before_any_graph(exported, tmp_path, capsys):
    from kcdp_export.cli import main

    out = tmp_path / "joy"
    assert main(["--ckpt", str(exported["ckpt"]), "--out", str(out), "--classes", "happiness", "joy"]) == 1
    err = capsys.readouterr().err
    assert "--classes: classes happiness joy" in err and "unknown: joy" in err and not out.exists()
