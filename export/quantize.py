"""int8 with onnxruntime.quantization: static QDQ (per-channel int8 weights, uint8 activations)
calibrated on real images for the convolutional graphs (image encoder, perception), dynamic int8 for
the text encoder's MatMuls (its activations vary with the sentence; dynamic is the standard recipe).

A graph whose int8 activations miss parity can still store its weights in int8 (`int8_weights`):
fp32 compute, a quarter of the bytes on disk, and the figures of fp32 within rounding."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from kcdp_export.onnx_export import EXTERNAL_DATA_THRESHOLD, initializer_bytes, save_model

CALIBRATION_BATCH = 8


class FeedsReader(CalibrationDataReader):
    """Calibration batches for quantize_static from arrays keyed by input name."""

    def __init__(self, feeds: dict[str, np.ndarray], batch: int = CALIBRATION_BATCH):
        self.feeds = feeds
        self.batch = batch
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        n = len(next(iter(self.feeds.values())))
        for start in range(0, n, self.batch):
            yield {k: np.ascontiguousarray(v[start : start + self.batch]) for k, v in self.feeds.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs hundreds of per-node warnings on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _output_producers(model: onnx.ModelProto) -> list[str]:
    """Nodes that write graph outputs stay float: a uint8-quantised softmax turns near-uniform
    probabilities into ties, and argmax over ties is a wrong label (measured: 0.07 agreement)."""
    outputs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if outputs.intersection(n.output) and n.name]


def _input_free_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes that read no graph input except through its shape, such as a diffusion UNet's time
    embedding at KADAP's fixed step: left in float, onnxruntime folds them into constants once the
    batch-1 session fixes the shapes (quantised, their DequantizeLinear nodes would keep them running
    on every call)."""
    dynamic = {i.name for i in model.graph.input}
    free = []
    for node in model.graph.node:  # topologically sorted
        if node.op_type == "Shape":
            continue  # depends on the input's shape only
        if dynamic.intersection(node.input):
            dynamic.update(node.output)
        elif node.name:
            free.append(node.name)
    return free


def _large(path: Path) -> bool:
    return initializer_bytes(onnx.load(str(path), load_external_data=False)) > EXTERNAL_DATA_THRESHOLD


def _fold(src: Path, dst: Path) -> Path:
    """onnxruntime's basic (standard-op) graph optimisations: constant folding and redundant-node
    removal halve a traced UNet's node count, and the quantizer's Python passes are quadratic in it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return dst


# Initialisers smaller than this stay fp32: biases and norms cost nothing and are sensitive.
WEIGHT_MIN_ELEMENTS = 4096


def _store_weights(src: Path, dst: Path, encode) -> list[Path]:
    """Rewrite every large fp32 weight W of a graph as smaller initializers plus decode nodes that
    produce W under its own name: `encode(name, w, out_axis)` -> (initializers, nodes), `out_axis`
    being W's output-channel axis (MatMul B is [in, out]; Conv/Gemm/Gather: dim 0). onnxruntime
    folds the decode nodes (plain ops on constants) when the session is created, so inference runs
    at fp32 speed and needs no quantized kernels."""
    model = onnx.load(str(src), load_external_data=True)
    graph = model.graph
    matmul_b = {n.input[1] for n in graph.node if n.op_type == "MatMul" and len(n.input) > 1}
    kept, decode = [], []
    for init in graph.initializer:
        w = onnx.numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.ndim < 2 or w.size < WEIGHT_MIN_ELEMENTS:
            kept.append(init)
            continue
        inits, nodes = encode(init.name, w, w.ndim - 1 if init.name in matmul_b else 0)
        kept += inits
        decode += nodes
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(decode + nodes)
    model.producer_name = "kcdp-export"
    return save_model(model, Path(dst))


def int8_weights(src: Path, dst: Path) -> list[Path]:
    """Store every large fp32 weight as per-output-channel symmetric int8 + an fp32 scale:
    Mul(Cast(int8 -> float), scale) (DequantizeLinear would not be folded: it is kept for QDQ fusion)."""

    def encode(name: str, w: np.ndarray, out_axis: int) -> tuple[list, list]:
        reduce = tuple(i for i in range(w.ndim) if i != out_axis)
        scale = np.abs(w).max(axis=reduce, keepdims=True) / 127.0
        scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        inits = [
            onnx.numpy_helper.from_array(q, f"{name}__int8"),
            onnx.numpy_helper.from_array(scale, f"{name}__scale"),
        ]
        nodes = [
            onnx.helper.make_node("Cast", [f"{name}__int8"], [f"{name}__float"], to=onnx.TensorProto.FLOAT),
            onnx.helper.make_node("Mul", [f"{name}__float", f"{name}__scale"], [name]),
        ]
        return inits, nodes

    return _store_weights(src, dst, encode)


def fp16_weights(src: Path, dst: Path) -> list[Path]:
    """Store every large fp32 weight as fp16 + Cast(-> float): half the file, fp32 compute.

    The step between int8 weights and fp32 for a graph whose int8 weights cost accuracy (the image
    encoder, whose embedding picks the caption): weights keep about 3 significant digits, not 2."""

    def encode(name: str, w: np.ndarray, _out_axis: int) -> tuple[list, list]:
        inits = [onnx.numpy_helper.from_array(w.astype(np.float16), f"{name}__fp16")]
        return inits, [onnx.helper.make_node("Cast", [f"{name}__fp16"], [name], to=onnx.TensorProto.FLOAT)]

    return _store_weights(src, dst, encode)


def quantize_graph(
    src: Path,
    dst: Path,
    mode: str,
    calibration: dict[str, np.ndarray] | None = None,
    op_types: tuple[str, ...] | None = None,
) -> list[Path]:
    """Write the int8 version of the fp32 graph src to dst; returns the files written. `op_types`:
    the op types static quantization covers (None: all it can)."""
    src, dst = Path(src), Path(dst)
    large = _large(src)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quant-") as scratch:
        tmp = Path(scratch) / dst.name
        if not large:
            src = _fold(src, Path(scratch) / ("folded-" + src.name))
        with warnings.catch_warnings(), _quiet_root_logger():
            warnings.simplefilter("ignore")
            if mode == "dynamic":
                quantize_dynamic(
                    str(src),
                    str(tmp),
                    weight_type=QuantType.QInt8,
                    per_channel=True,  # MiniLM: sentence cosine .987 vs .949 per-tensor
                    use_external_data_format=large,
                    # fused contrib ops (transformer optimizer) defeat ONNX type inference: all float
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                )
            elif mode == "static":
                if calibration is None:
                    raise ValueError(f"{src.name}: static int8 needs calibration inputs (real images)")
                graph = onnx.load(str(src), load_external_data=False)
                quantize_static(
                    str(src),
                    str(tmp),
                    FeedsReader(calibration),
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax,
                    use_external_data_format=large,
                    extra_options={"CalibTensorRangeSymmetric": False},
                    nodes_to_exclude=_output_producers(graph) + _input_free_nodes(graph),
                    op_types_to_quantize=list(op_types) if op_types else None,
                )
            else:
                raise ValueError(f"unknown quantization mode {mode!r}")
        model = onnx.load(str(tmp), load_external_data=True)
    model.producer_name = "kcdp-export"
    return save_model(model, dst)
