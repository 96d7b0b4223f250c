"""kcdp-export building blocks: parity refusal, external data, fp16 graph order, tokenizer, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from kcdp_export import validate  # noqa: E402
from kcdp_export.graphs import BATCH, GraphConfig, TensorSpec, image_dummy  # noqa: E402
from kcdp_export.onnx_export import export_graph  # noqa: E402


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32, 5)

    def forward(self, pixels):
        logits = self.fc(self.conv(pixels).relu().mean((2, 3)))
        return logits, logits.softmax(-1)


def pixel_graph(
    name: str, module: torch.nn.Module, outputs: tuple[str, ...] = ("logits", "probs")
) -> GraphConfig:
    """A graph of `module` on 16 px images whose outputs are [batch, 5] each, labelled by logits."""
    return GraphConfig(
        name=name,
        module=module.eval(),
        inputs=[TensorSpec("pixels", (BATCH, 3, 16, 16))],
        outputs=[TensorSpec(o, (BATCH, 5)) for o in outputs],
        dummy=image_dummy(16),
        label_output="logits",
    )


def small_graph() -> GraphConfig:
    return pixel_graph("small", SmallNet())


def test_parity_passes_then_refuses_a_corrupted_graph(tmp_path):
    graph = small_graph()
    path = tmp_path / "small.onnx"
    export_graph(graph, path)
    validate.check_model(path)
    real = [graph.dummy(4, np.random.default_rng(9))]
    ok = validate.enforce(
        validate.measure(graph, validate.session(path), validate.random_feeds(graph), real), "logits"
    )
    assert (
        ok.passed
        and ok.max_abs_diff <= 1e-5
        and ok.label_agreement == 1.0
        and ok.n_random == 4
        and ok.n_real == 4
    )

    model = onnx.load(str(path))
    weight = next(t for t in model.graph.initializer if t.name.endswith("fc.weight"))
    arr = onnx.numpy_helper.to_array(weight).copy()
    arr[0] += 0.5  # a wrong weight, as a broken export would have
    weight.CopyFrom(onnx.numpy_helper.from_array(arr, weight.name))
    onnx.save(model, str(path))
    result = validate.measure(graph, validate.session(path), validate.random_feeds(graph), real)
    with pytest.raises(validate.ParityError, match=r"export refused.*logits: max abs diff") as err:
        validate.enforce(result, "logits")
    assert err.value.parity.max_abs_diff > 1e-3 and not err.value.parity.passed


def test_external_data_past_the_threshold(tmp_path, monkeypatch):
    import kcdp_export.onnx_export as ox

    monkeypatch.setattr(ox, "EXTERNAL_DATA_THRESHOLD", 100)  # bytes: stands in for 2 GB
    graph = small_graph()
    path = tmp_path / "small.onnx"
    files = export_graph(graph, path)
    assert files == [path, tmp_path / "small.onnx.data"] and files[1].stat().st_size > 100
    validate.check_model(path)
    feeds = graph.dummy(2, np.random.default_rng(0))
    got = validate.run_onnx(validate.session(path), feeds)
    np.testing.assert_allclose(got["logits"], graph.run_torch(feeds)["logits"], atol=1e-5)


def test_fp16_variant_is_valid_and_close(tmp_path):
    from kcdp_export.onnx_export import convert_fp16

    graph = small_graph()
    export_graph(graph, tmp_path / "small.onnx")
    convert_fp16(tmp_path / "small.onnx", tmp_path / "half.onnx")
    validate.check_model(tmp_path / "half.onnx")  # topologically sorted, types consistent
    sess = validate.session(tmp_path / "half.onnx")
    assert sess.get_inputs()[0].type == "tensor(float)"  # io stays float32
    result = validate.measure(graph, sess, validate.random_feeds(graph), [], precision="fp16")
    assert result.max_abs_diff < 1e-2


def test_fp16_of_a_graph_past_2_gb_with_external_data(tmp_path, monkeypatch):
    """The sd15 UNet: weights in external data, and no in-memory shape inference (protobuf cannot
    serialise past 2 GB: "Failed to serialize proto", measured on the true-size export)."""
    import onnx

    import kcdp_export.onnx_export as ox

    monkeypatch.setattr(ox, "EXTERNAL_DATA_THRESHOLD", 100)  # bytes: stands in for 2 GB

    def refuse(*_a, **_k):
        raise RuntimeError("in-memory shape inference: Failed to serialize proto")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", refuse)
    graph = small_graph()
    export_graph(graph, tmp_path / "small.onnx")
    files = ox.convert_fp16(tmp_path / "small.onnx", tmp_path / "half.onnx")
    assert files == [tmp_path / "half.onnx", tmp_path / "half.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "half.onnx",
        "half.onnx.data",
        "small.onnx",
        "small.onnx.data",
    ]  # the shape-inference scratch copy is gone
    result = validate.measure(
        graph, validate.session(tmp_path / "half.onnx"), validate.random_feeds(graph), [], precision="fp16"
    )
    assert result.max_abs_diff < 1e-2


def test_exported_tokenizer_matches_transformers(tmp_path):
    from transformers import BertTokenizer

    from kcdp_core.knowledge.text_encoder import TextEncoder
    from kcdp_export.tokenizer import check_tokenizer, encode, export_tokenizer

    vocab = {
        w: i
        for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "happy", "face", "sad"])
    }
    tok = BertTokenizer(vocab=vocab, do_lower_case=True)
    enc = TextEncoder(torch.nn.Identity(), tok, length=6)
    enc.model.config = None  # unused here
    path = export_tokenizer(tok, tmp_path / "tokenizer", 6)
    texts = ["a happy face", "A SAD face a happy face a sad face", "zebra", ""]
    assert check_tokenizer(path, enc, texts) == 4
    ids, mask = encode(path, texts)
    assert ids.shape == (4, 6) and mask[2].tolist() == [1, 1, 1, 0, 0, 0] and mask[1].sum() == 6


def test_cli_refuses_bad_requests_and_writes_nothing(tmp_path, capsys):
    from kcdp_export.cli import main

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    out = tmp_path / "out"
    assert main(["--ckpt", str(ckpt), "--out", str(out)]) == 1
    assert "config.json missing" in capsys.readouterr().err
    assert main(["--ckpt", str(ckpt), "--out", str(out), "--precision", "int8"]) == 1
    assert "int8 needs --calibration" in capsys.readouterr().err
    out.mkdir()
    (out / "keep.txt").write_text("x")
    (ckpt / "config.json").write_text("{}")
    assert main(["--ckpt", str(ckpt), "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(out)])
    assert exc.value.code == 2


def test_triton_config_and_tensorrt_message(tmp_path):
    from kcdp_export.tensorrt import tensorrt_status
    from kcdp_export.triton import config_pbtxt

    text = config_pbtxt(small_graph(), max_batch_size=8, precision="fp16")
    assert "max_batch_size: 8" in text and "dims: [ 3, 16, 16 ]" in text and "TYPE_FP32" in text
    assert '"precision_mode" value: "FP16"' in text
    ok, reason = tensorrt_status()
    if not torch.cuda.is_available():
        assert not ok and ("tensorrt" in reason or "CUDA" in reason)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU")
def test_tensorrt_engine_matches_pytorch(tmp_path):
    pytest.importorskip("tensorrt")
    from kcdp_export.tensorrt import build_engines

    graph = small_graph()
    export_graph(graph, tmp_path / graph.file)
    reports = build_engines(tmp_path, [graph], "fp32", {"small": validate.random_feeds(graph)}, max_batch=4)
    assert reports[0].max_abs_diff < 1e-3 and reports[0].label_agreement == 1.0
    assert json.dumps(reports[0].__dict__)


def test_reduced_precision_floors():
    from kcdp_export.exporter import ExportOptions, _variant_problem

    fp32 = {"accuracy": 0.50, "label_agreement": 1.0}
    opts = ExportOptions(precision="int8", int8_max_drop=1.0, min_agreement=0.9)
    assert _variant_problem({"accuracy": 0.495, "label_agreement": 0.95}, fp32, opts) is None
    assert "points" in _variant_problem({"accuracy": 0.48, "label_agreement": 0.95}, fp32, opts)
    assert "agreement" in _variant_problem({"accuracy": 0.52, "label_agreement": 0.85}, fp32, opts)
    assert _variant_problem({"label_agreement": 0.95}, fp32, opts) is None  # unlabelled: agreement only


class WideNet(torch.nn.Module):
    """Weights past quantize.WEIGHT_MIN_ELEMENTS, so the weight-storage variants rewrite them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 64, 3, padding=1)
        self.hidden = torch.nn.Linear(64, 256)
        self.fc = torch.nn.Linear(256, 5)

    def forward(self, pixels):
        logits = self.fc(self.hidden(self.conv(pixels).relu().mean((2, 3))).relu())
        return logits, logits.softmax(-1)


def test_weight_storage_variants_shrink_the_file_and_stay_close(tmp_path):
    from kcdp_export.quantize import fp16_weights, int8_weights

    graph = pixel_graph("wide", WideNet())
    export_graph(graph, tmp_path / "wide.onnx")
    size = (tmp_path / "wide.onnx").stat().st_size
    diffs = {}
    for name, rewrite in (("fp16", fp16_weights), ("int8", int8_weights)):
        rewrite(tmp_path / "wide.onnx", tmp_path / f"{name}.onnx")
        validate.check_model(tmp_path / f"{name}.onnx")
        sess = validate.session(tmp_path / f"{name}.onnx")
        assert sess.get_inputs()[0].type == "tensor(float)"
        diffs[name] = validate.measure(
            graph, sess, validate.random_feeds(graph), [], precision=name
        ).max_abs_diff
    assert (tmp_path / "fp16.onnx").stat().st_size < 0.6 * size
    assert (tmp_path / "int8.onnx").stat().st_size < 0.4 * size
    assert diffs["fp16"] < 1e-3 and diffs["fp16"] < diffs["int8"] < 5e-2


def test_a_graph_known_to_fail_int8_activations_starts_at_int8_weights(tmp_path):
    """GraphConfig.quantization "weights" (the face encoder): no static int8 graph is built or measured;
    the graph ships as int8 weights with fp32 compute, parity recorded. A static graph goes to int8."""
    import dataclasses
    import io
    from types import SimpleNamespace

    from kcdp_export.exporter import ExportOptions, _reduce

    (tmp_path / "fp32").mkdir()
    log = io.StringIO()
    options = ExportOptions(precision="int8", log=log)
    shipped, parity = {}, {}
    for name, kind in (("static", "static"), ("weights", "weights")):
        graph = dataclasses.replace(pixel_graph(name, WideNet()), quantization=kind)
        export_graph(graph, tmp_path / "fp32" / graph.file)
        feeds = [graph.dummy(8, np.random.default_rng(1))]
        run = SimpleNamespace(
            options=options, parity={name: {}}, fp32_dir=tmp_path / "fp32", work=tmp_path,
            real_feeds={name: feeds}, log=lambda m: log.write(m + "\n"),
        )  # fmt: skip
        shipped[name], parity[name] = _reduce(run, graph), run.parity[name]
    assert shipped == {"static": "int8", "weights": "int8-weights"}
    assert set(parity["weights"]) == {"int8_weights"} and parity["weights"]["int8_weights"]["passed"]
    assert "int8" in parity["static"] and "int8_weights" not in parity["static"]
    weights = onnx.load(str(tmp_path / "weights.onnx")).graph
    assert "QuantizeLinear" not in {node.op_type for node in weights.node}  # activations stay fp32
    assert onnx.TensorProto.INT8 in {t.data_type for t in weights.initializer}
    assert "keeping this graph in fp32" not in log.getvalue()


class GatedNet(torch.nn.Module):
    """conv -> x * sigmoid(x) + x -> pool -> linear: weighted ops with elementwise ones between."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, pixels):
        x = self.conv(pixels)
        return (self.fc((x * x.sigmoid() + x).mean((2, 3))),)


def test_static_int8_restricted_to_weighted_ops(tmp_path):
    from kcdp_export.quantize import quantize_graph

    graph = pixel_graph("gated", GatedNet(), ("logits",))
    src = tmp_path / "gated.onnx"
    export_graph(graph, src)
    calibration = graph.dummy(16, np.random.default_rng(3))

    def quantized(ops) -> set[str]:
        """The op types whose outputs int8 quantizes (a QuantizeLinear reads them)."""
        dst = tmp_path / f"int8-{ops}.onnx"
        quantize_graph(src, dst, "static", calibration, ops)
        model = onnx.load(str(dst))
        producer = {o: n.op_type for n in model.graph.node for o in n.output}
        return {producer.get(n.input[0], "input") for n in model.graph.node if n.op_type == "QuantizeLinear"}

    everything = quantized(None)
    weighted = quantized(("Conv", "MatMul", "Gemm"))
    assert {"Mul", "Add"} <= everything  # by default the elementwise ops run in int8 too
    assert "Conv" in weighted and not ({"Mul", "Add", "Sigmoid"} & weighted)


class ConstantBranchNet(torch.nn.Module):
    """A linear layer on a constant expanded to the batch (as a UNet's time embedding at a fixed step)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("step", torch.randn(1, 8))
        self.embed = torch.nn.Linear(8, 16)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, x):
        return (self.fc(x + self.embed(self.step.expand(x.shape[0], -1))),)


def test_static_int8_leaves_input_free_nodes_in_float(tmp_path):
    from kcdp_export.quantize import _input_free_nodes

    graph = GraphConfig(
        name="const",
        module=ConstantBranchNet().eval(),
        inputs=[TensorSpec("x", (BATCH, 16))],
        outputs=[TensorSpec("logits", (BATCH, 5))],
        dummy=lambda b, rng: {"x": rng.standard_normal((b, 16)).astype(np.float32)},
    )
    src = tmp_path / "const.onnx"
    export_graph(graph, src)
    free = _input_free_nodes(onnx.load(str(src)))
    # the constant branch depends on the input's shape only: excluded from int8, foldable at batch 1
    assert "/embed/Gemm" in free and "/Expand" in free
    assert "/fc/Gemm" not in free and "/Add" not in free


def test_a_banks_triplets_are_parsed_once_across_exports(tmp_path, monkeypatch) -> None:
    """The second export of the same caption bank reads its triplets from a persistent memo instead of
    running spaCy over the bank again; the files are the same, and the runtime's own memo (which every
    Pipeline loads at start) is left alone."""
    from safetensors.numpy import save_file

    from kcdp_core.config import KnowledgeConfig
    from kcdp_core.portable.caption_bank import CaptionBank
    from kcdp_core.portable.triplets import PARSER_VERSION, TripletParser
    from kcdp_export.exporter import ExportOptions, _export_bank

    monkeypatch.setenv("KCDP_CACHE", str(tmp_path / "cache"))
    captions = ["a man is hugging a woman", "a sad face", "a man is hugging a woman", "face with tears"]
    src = tmp_path / "bank"
    src.mkdir()
    embeddings = np.eye(4, dtype=np.float32)
    save_file({"embeddings": embeddings}, str(src / "embeddings.safetensors"))
    bank = CaptionBank(captions, embeddings)
    parsed: list[list[str]] = []
    parse_many = TripletParser.parse_many

    def counting(self, texts, batch_size=64):
        parsed.append(list(texts))
        return parse_many(self, texts, batch_size)

    monkeypatch.setattr(TripletParser, "parse_many", counting)
    kc = KnowledgeConfig(captioner="retrieval", retrieval_top_k=1)
    _export_bank(bank, src, tmp_path / "first", kc, ExportOptions())
    _export_bank(bank, src, tmp_path / "second", kc, ExportOptions())
    assert parsed == [captions[:2] + captions[3:]]  # each distinct caption once, in the first export
    first = (tmp_path / "first" / "captions.jsonl").read_text()
    assert first == (tmp_path / "second" / "captions.jsonl").read_text()
    rows = [json.loads(line) for line in first.splitlines()]
    assert [r["caption"] for r in rows] == captions
    assert rows[0]["triplets"] == [["man", "hugging", "woman"]]
    memos = sorted(p.name for p in (tmp_path / "cache" / "parsed_captions").iterdir())
    assert memos == [f"bank-{PARSER_VERSION}-{kc.parser_model}.jsonl"]
