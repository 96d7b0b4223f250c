"""A tiny export folder for the runtime tests, built in milliseconds with onnx.helper.

It honours the manifest contract (export/README.md, "manifest.json"): the same graph names, inputs, outputs
and files as kcdp-export writes, with small hand-set weights instead of a trained model. The
perception graph reads the image's mean colour, so tests can assert labels: a red image is
"anger", a blue one "sadness", a yellow one "happiness".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from kcdp_core.portable.labels import EMOJI7
from kcdp_core.portable.triplets import PARSER_VERSION

SIZE = 16  # image size of the fake export
LENGTH = 8  # text_length L
DIM = 12  # text encoder width D
EMBED = 6  # image embedding E
BANK = [
    ("an angry red face", [["face", "is", "angry"], ["face", "is", "red"]]),
    ("a sad blue face with tears", [["face", "is", "sad"], ["face", "with", "tears"]]),
    ("a happy yellow face smiling", [["face", "is", "happy"], ["face", "smiling", "camera"]]),
    ("a neutral face", None),  # no precomputed triplets: the pipeline parses this one
]


def _graph_model(nodes, inputs, outputs, inits, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _image_encoder(rng: np.random.Generator) -> onnx.ModelProto:
    w = numpy_helper.from_array(rng.normal(size=(3, EMBED)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(EMBED,)).astype(np.float32) * 0.1, "b")
    nodes = [
        helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["mean", "w"], ["proj"]),
        helper.make_node("Add", ["proj", "b"], ["raw"]),
        helper.make_node("LpNormalization", ["raw"], ["embedding"], axis=1, p=2),
    ]
    return _graph_model(
        nodes,
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBED])],
        [w, b],
        "image_encoder",
    )


def _text_encoder(rng: np.random.Generator, vocab: int) -> onnx.ModelProto:
    table = numpy_helper.from_array(rng.normal(size=(vocab, DIM)).astype(np.float32), "table")
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["token_states"]),
    ]
    axis = numpy_helper.from_array(np.array([-1], np.int64), "axis")
    return _graph_model(
        nodes,
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", LENGTH]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", LENGTH]),
        ],
        [helper.make_tensor_value_info("token_states", TensorProto.FLOAT, ["batch", LENGTH, DIM])],
        [table, axis],
        "text_encoder",
    )


def _perception(rng: np.random.Generator) -> onnx.ModelProto:
    classes = len(EMOJI7)
    w_pix = np.zeros((3, classes), np.float32)
    # colour -> emotion: red = anger, blue = sadness, red+green (yellow) = happiness
    w_pix[0, EMOJI7.index("anger")] = 8.0
    w_pix[1, EMOJI7.index("anger")] = -8.0
    w_pix[2, EMOJI7.index("sadness")] = 8.0
    w_pix[0, EMOJI7.index("sadness")] = -4.0
    w_pix[0, EMOJI7.index("happiness")] = 4.0
    w_pix[1, EMOJI7.index("happiness")] = 4.0
    w_pix[2, EMOJI7.index("happiness")] = -8.0
    w_know = rng.normal(size=(DIM, classes)).astype(np.float32) * 0.01
    weight = numpy_helper.from_array(np.concatenate([w_pix, w_know]), "w")
    eps = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    axis = numpy_helper.from_array(np.array([-1], np.int64), "axis")
    nodes = [
        helper.make_node("ReduceMean", ["pixels"], ["pix"], axes=[2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["knowledge_mask", "axis"], ["m3"]),
        helper.make_node("Mul", ["knowledge", "m3"], ["km"]),
        helper.make_node("ReduceSum", ["km", "sum_axis"], ["ksum"], keepdims=0),
        helper.make_node("ReduceSum", ["m3", "sum_axis"], ["msum"], keepdims=0),
        helper.make_node("Max", ["msum", "one"], ["msafe"]),
        helper.make_node("Div", ["ksum", "msafe"], ["kpool"]),
        helper.make_node("Concat", ["pix", "kpool"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    sum_axis = numpy_helper.from_array(np.array([1], np.int64), "sum_axis")
    return _graph_model(
        nodes,
        [
            helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE]),
            helper.make_tensor_value_info("knowledge", TensorProto.FLOAT, ["batch", 2 * LENGTH, DIM]),
            helper.make_tensor_value_info("knowledge_mask", TensorProto.FLOAT, ["batch", 2 * LENGTH]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3 + DIM]),
        ],
        [weight, eps, axis, sum_axis],
        "perception",
    )


def _tokenizer(folder: Path) -> int:
    words = sorted({w for caption, _ in BANK for w in caption.split()} | {"is", "with", "camera", "smiling"})
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]"}))
    return len(vocab)


def build_fake_export(folder: str | Path, seed: int = 0) -> Path:
    """Write a complete export folder (manifest.json, three graphs, tokenizer, caption bank)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = _tokenizer(folder / "tokenizer")
    onnx.save(_image_encoder(rng), str(folder / "image_encoder.onnx"))
    onnx.save(_text_encoder(rng, vocab), str(folder / "text_encoder.onnx"))
    onnx.save(_perception(rng), str(folder / "perception.onnx"))
    bank = folder / "caption_bank"
    bank.mkdir(exist_ok=True)
    lines = []
    for caption, triplets in BANK:
        entry = {"caption": caption} | ({"triplets": triplets} if triplets is not None else {})
        lines.append(json.dumps(entry))
    (bank / "captions.jsonl").write_text("\n".join(lines) + "\n")
    emb = rng.normal(size=(len(BANK), EMBED)).astype(np.float32)
    save_file(
        {"embeddings": emb / np.linalg.norm(emb, axis=1, keepdims=True)}, str(bank / "embeddings.safetensors")
    )
    graphs = {
        "text_encoder": {
            "file": "text_encoder.onnx",
            "inputs": {"input_ids": ["batch", LENGTH, "int64"], "attention_mask": ["batch", LENGTH, "int64"]},
            "outputs": {"token_states": ["batch", LENGTH, DIM, "float32"]},
        },
        "image_encoder": {
            "file": "image_encoder.onnx",
            "inputs": {"pixels": ["batch", 3, SIZE, SIZE, "float32"]},
            "outputs": {"embedding": ["batch", EMBED, "float32"]},
        },
        "perception": {
            "file": "perception.onnx",
            "inputs": {
                "pixels": ["batch", 3, SIZE, SIZE, "float32"],
                "knowledge": ["batch", 2 * LENGTH, DIM, "float32"],
                "knowledge_mask": ["batch", 2 * LENGTH, "float32"],
            },
            "outputs": {"logits": ["batch", 7], "probs": ["batch", 7], "features": ["batch", 3 + DIM]},
        },
    }
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"):
        files[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {
        "format": "kcdp-export",
        "format_version": 1,
        "package_version": "0.1.0",
        "created": "2026-01-01T00:00:00Z",
        "preset": "fake",
        "labels": list(EMOJI7),
        "precision": "fp32",
        "preprocessing": {"image_size": SIZE, "resize_filter": "bicubic", "pixel_range": [0, 1],
                          "layout": "NCHW", "pad_to_square": "white", "alpha": "composite on white"},
        "knowledge": {"captioner": "retrieval", "text_length": LENGTH, "max_triplets": 4, "retrieval_top_k": 1,
                      "parser": {"model": "en_core_web_sm", "version": PARSER_VERSION}},
        "tokenizer": {"folder": "tokenizer", "file": "tokenizer/tokenizer.json", "max_length": LENGTH},
        "caption_bank": {"captions": "caption_bank/captions.jsonl",
                         "embeddings": "caption_bank/embeddings.safetensors", "triplets_parser": PARSER_VERSION},
        "graphs": graphs,
        "files": files,
    }  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder
