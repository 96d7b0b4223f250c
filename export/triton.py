"""`--triton`: the exported graphs as a Triton Inference Server model repository.

<export>/triton/<graph>/config.pbtxt + <graph>/1/model.onnx (+ the external data files it reads, under
the names referenced inside the graph, hard-linked: weights shared by graphs take no extra disk). The batch axis is Triton's (max_batch_size > 0, dims without it) and
dynamic batching is on. Caption retrieval, the triplet parser and the tokenizer are Python steps
outside these graphs (the runtime runs them; a Triton ensemble would need a Python backend model)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kcdp_export.graphs import BATCH, GraphConfig
from kcdp_export.shared_weights import external_files

TRITON_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "float16": "TYPE_FP16"}


def _tensor(spec) -> str:
    dims = ", ".join(str(d) for d in spec.shape if d != BATCH)
    return f'  {{\n    name: "{spec.name}"\n    data_type: {TRITON_TYPES[spec.dtype]}\n    dims: [ {dims} ]\n  }}'


def config_pbtxt(graph: GraphConfig, max_batch_size: int = 32, precision: str = "fp32") -> str:
    lines = [
        f'name: "{graph.name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(_tensor(t) for t in graph.inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor(t) for t in graph.outputs) + "\n]",
        "dynamic_batching { }",
        "instance_group [ { count: 1, kind: KIND_AUTO } ]",
    ]
    if precision in ("fp16", "fp32"):
        # On a GPU Triton may hand the graph to TensorRT through onnxruntime; ignored on CPU.
        mode = "FP16" if precision == "fp16" else "FP32"
        lines.append(
            "optimization { execution_accelerators { gpu_execution_accelerator : [ { "
            f'name : "tensorrt" parameters {{ key: "precision_mode" value: "{mode}" }} '
            'parameters { key: "max_workspace_size_bytes" value: "1073741824" } } ] } }'
        )
    return "\n".join(lines) + "\n"


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)  # same bytes, no extra disk
    except OSError:
        shutil.copy2(src, dst)


def write_repository(
    folder: Path, graphs: list[GraphConfig], max_batch_size: int = 32, precision: str = "fp32"
) -> Path:
    """folder/triton/<graph>/... for every graph whose ONNX file is in folder."""
    repo = Path(folder) / "triton"
    for graph in graphs:
        src = Path(folder) / graph.file
        version = repo / graph.name / "1"
        version.mkdir(parents=True, exist_ok=True)
        _link_or_copy(src, version / "model.onnx")
        for location in external_files(src):  # its own <file>.data, or weights shared with other graphs
            _link_or_copy(Path(folder) / location, version / location)
        (repo / graph.name / "config.pbtxt").write_text(config_pbtxt(graph, max_batch_size, precision))
    return repo
