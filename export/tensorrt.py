"""`--tensorrt`: TensorRT engines built from the exported ONNX graphs with the tensorrt Python API,
one optimisation profile over the batch axis, checked against onnxruntime on the GPU. Needs a CUDA
GPU and `pip install kcdp[gpu]`; elsewhere `tensorrt_status()` says why not and nothing is built.

Engines are specific to the GPU model and TensorRT version they were built with; the manifest records
both. Runtimes without the Python API can instead use onnxruntime's TensorrtExecutionProvider with
`trt_engine_cache_enable` on the same ONNX files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kcdp_export.graphs import GraphConfig


class TensorRTUnavailable(RuntimeError):
    pass


def tensorrt_status() -> tuple[bool, str]:
    """(available, reason). Available means: the tensorrt module imports and a CUDA GPU is visible."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "the tensorrt Python package is not installed (pip install 'kcdp[gpu]')"
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    except ImportError:  # pragma: no cover - export always has torch
        return False, "torch is needed to check for a CUDA GPU"
    return True, "ok"


@dataclass
class EngineReport:
    graph: str
    file: str
    precision: str
    max_abs_diff: float
    label_agreement: float | None
    device: str
    tensorrt_version: str


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    graph: GraphConfig,
    precision: str,
    max_batch: int = 32,
    opt_batch: int = 1,
) -> Path:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt, "NetworkDefinitionCreationFlag") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # the graph carries its own QDQ scales
    profile = builder.create_optimization_profile()
    for spec in graph.inputs:
        profile.set_shape(
            spec.name, spec.concrete(1), spec.concrete(max(1, opt_batch)), spec.concrete(max_batch)
        )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    return engine_path


def run_engine(engine_path: Path, graph: GraphConfig, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an engine on numpy feeds, with torch CUDA tensors as device buffers."""
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    context = engine.create_execution_context()
    batch = len(next(iter(feeds.values())))
    keep = []
    for spec in graph.inputs:
        t = torch.from_numpy(np.ascontiguousarray(feeds[spec.name])).cuda()
        keep.append(t)
        context.set_input_shape(spec.name, tuple(t.shape))
        context.set_tensor_address(spec.name, t.data_ptr())
    outputs = {}
    for spec in graph.outputs:
        dtype = torch.float32 if spec.dtype == "float32" else torch.int64
        t = torch.empty(spec.concrete(batch), dtype=dtype, device="cuda")
        outputs[spec.name] = t
        context.set_tensor_address(spec.name, t.data_ptr())
    stream = torch.cuda.Stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise RuntimeError(f"{engine_path}: TensorRT execution failed")
    stream.synchronize()
    return {k: v.cpu().numpy() for k, v in outputs.items()}


def build_engines(
    folder: Path,
    graphs: list[GraphConfig],
    precision: str,
    check_feeds: dict[str, list[dict[str, np.ndarray]]],
    max_batch: int = 32,
) -> list[EngineReport]:
    """folder/tensorrt/<graph>.plan for each graph, each compared with PyTorch on check_feeds."""
    ok, reason = tensorrt_status()
    if not ok:
        raise TensorRTUnavailable(f"TensorRT engines not built: {reason}")
    import tensorrt as trt
    import torch

    reports = []
    for graph in graphs:
        engine = build_engine(
            Path(folder) / graph.file,
            Path(folder) / "tensorrt" / f"{graph.name}.plan",
            graph,
            precision,
            max_batch,
        )
        diff, agree, total = 0.0, 0, 0
        for feeds in check_feeds.get(graph.name, []):
            got, ref = run_engine(engine, graph, feeds), graph.run_torch(feeds)
            diff = max(diff, max(float(np.abs(got[n] - ref[n]).max()) for n in graph.output_names))
            if graph.label_output:
                agree += int((graph.labels(got) == graph.labels(ref)).sum())
                total += len(ref[graph.label_output])
        reports.append(
            EngineReport(
                graph=graph.name,
                file=f"tensorrt/{graph.name}.plan",
                precision=precision,
                max_abs_diff=diff,
                label_agreement=(agree / total) if total else None,
                device=torch.cuda.get_device_name(0),
                tensorrt_version=trt.__version__,
            )
        )
    return reports
