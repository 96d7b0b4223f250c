"""Trace one GraphConfig to ONNX: opset >= 17, dynamic batch axis, external data past 2 GB; fp16 variant.

The TorchScript-based exporter (`dynamo=False`) is used: with torch 2.13 it traces the diffusers UNet
(cross-attention with an encoder mask), transformers encoders and the MoE head in seconds, needs no
onnxscript, and its graphs pass onnx.checker's full check. The dynamo exporter needs onnxscript and
was not more faithful on these models.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from kcdp_export.graphs import GraphConfig

DEFAULT_OPSET = 17
# A protobuf cannot exceed 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_900_000_000
TRACE_BATCH = 2  # not 1, so that no batch-1 shortcut is baked into the graph


def initializer_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            total += int(next((e.value for e in tensor.external_data if e.key == "length"), 0))
        else:
            total += len(tensor.raw_data) or tensor.ByteSize()
    return total


def save_model(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Write model to path; weights go to `<file>.data` beside it when they would pass 2 GB.
    Returns every file written."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name
        )
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]


def export_graph(graph: GraphConfig, path: Path, opset: int = DEFAULT_OPSET, seed: int = 0) -> list[Path]:
    """Trace graph.module on dummy inputs into path. Returns the files written (graph + external data)."""
    if opset < 17:
        raise ValueError(f"opset {opset}: KCDP graphs need opset 17 or newer (LayerNormalization)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    feeds = graph.dummy(TRACE_BATCH, np.random.default_rng(seed))
    args = tuple(torch.from_numpy(feeds[n]) for n in graph.input_names)
    module = graph.module.eval()
    # Trace into a scratch folder: for a large graph the tracer spills weights into files beside it.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".trace-") as scratch:
        raw = Path(scratch) / path.name
        _trace(graph, module, args, raw, opset)
        module.eval()  # the exporter restores the previous mode; leave nothing in train mode
        model = onnx.load(str(raw), load_external_data=True)
    model.producer_name = "kcdp-export"
    return save_model(model, path)


def _trace(graph: GraphConfig, module: torch.nn.Module, args: tuple, raw: Path, opset: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer's warnings about Python control flow are expected (shapes are fixed except batch);
        # parity on other batch sizes is what proves the graph right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(raw),
            dynamo=False,
            opset_version=opset,
            input_names=graph.input_names,
            output_names=graph.output_names,
            dynamic_axes=graph.dynamic_axes(),
            do_constant_folding=True,
        )


def convert_fp16(src: Path, dst: Path) -> list[Path]:
    """fp16 weights and compute for GPUs; inputs and outputs stay float32 so callers feed the same arrays."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Shape inference on the file, not in memory: onnx.shape_inference.infer_shapes serialises the
    # model, which protobuf refuses past 2 GB (the sd15 UNet). Written beside `src` so that the
    # external data file's relative location still resolves.
    shaped = src.with_name(f".{src.stem}.shapes{src.suffix}")
    try:
        onnx.shape_inference.infer_shapes_path(str(src), str(shaped))
        model = onnx.load(str(shaped), load_external_data=True)
    finally:
        shaped.unlink(missing_ok=True)
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    topological_sort(half.graph)  # the converter appends its input casts after their consumers
    return save_model(half, dst)


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder graph.node so every node comes after the producers of its inputs (Kahn's algorithm)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    nodes = list(graph.node)
    producer = {out: n for n, node in enumerate(nodes) for out in node.output}
    pending = {
        n: {i for i in node.input if i not in available and i in producer} for n, node in enumerate(nodes)
    }
    consumers: dict[int, list[int]] = {}
    for n, deps in pending.items():
        for name in deps:
            consumers.setdefault(producer[name], []).append(n)
    waiting = {n: len({producer[d] for d in deps}) for n, deps in pending.items()}
    for n in consumers:
        consumers[n] = sorted(set(consumers[n]))
    ready = [n for n, count in waiting.items() if count == 0]
    order: list[int] = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for m in consumers.get(n, []):
            waiting[m] -= 1
            if waiting[m] == 0:
                ready.append(m)
    if len(order) != len(nodes):
        raise ValueError("graph has a cycle; cannot sort it")
    sorted_nodes = [nodes[n] for n in order]
    del graph.node[:]
    graph.node.extend(sorted_nodes)
