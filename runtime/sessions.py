"""onnxruntime sessions: execution-provider choice (TensorRT > CUDA > CPU, with fallback) and options.

The first provider that actually builds a session wins: onnxruntime lists TensorRT/CUDA as
"available" whenever the GPU wheel is installed, even on a machine without the driver, so a
provider is only trusted after a session was created with it and reports it as active.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnxruntime as ort

from kcdp_core.portable.constants import cache_root

log = logging.getLogger("kcdp_runtime")

PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
SHORT = {
    "TensorrtExecutionProvider": "tensorrt",
    "CUDAExecutionProvider": "cuda",
    "CPUExecutionProvider": "cpu",
}
_ALIASES = {v: k for k, v in SHORT.items()}


@dataclass
class SessionConfig:
    """How graphs run. providers: None = best available in PREFERENCE order; or names like ["cpu"]."""

    providers: list[str] | None = None
    intra_op_threads: int = 0  # 0: onnxruntime's default (one per physical core)
    inter_op_threads: int = 1  # graphs here are sequential chains; parallel ops gain nothing
    # Idle intra-op threads spin by default; three sessions run one after another per image, so
    # their spinning pools fight over the same cores (measured on 2 shared cores: batch-1 p50
    # 6.6-10 ms without spinning vs 16-18 ms with). On a dedicated many-core box, True may win.
    allow_spinning: bool = False
    graph_optimization: str = "all"  # disable | basic | extended | all
    tensorrt_cache: str | None = None  # engine cache folder (TensorRT builds take minutes)
    provider_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # CPU: keep graphs pre-optimised in ORT format under $KCDP_CACHE/ort (halves session creation,
    # the largest part of a cold start for a UNet-sized graph).
    graph_cache: bool = True
    # ...except these graphs: the image encoder (EfficientNet) runs slower from the ORT-format copy
    # (measured, 96 px, batch 1, quiet machine: 8.3 ms p50 from the cache vs 3.8 ms from the .onnx)
    # and is small enough to optimise at every load; the face encoder is the same network.
    uncached_graphs: tuple[str, ...] = ("image_encoder", "face_encoder")
    # CPU: single images run through a copy of each graph with its batch axis fixed to 1
    # (onnxruntime's free-dimension override), so the traced shape arithmetic folds into constants:
    # a third fewer nodes in the int8 perception graph, which at 64 px is bound by per-node
    # dispatch. Batches use the dynamic graph, made on first need.
    batch_one: bool = True
    # ...and these graphs' batch-1 copies run on one intra-op thread: the int8 perception graph at
    # batch 1 is a chain of ~1,500 small ops, where handing each op to a second thread costs more
    # than it saves (measured, default model v4, quiet 2-core machine: p50 9.7 ms on one thread vs
    # 10.6-11.3 ms on two). The second core runs the latents and face encoder graphs beside the
    # image encoder and kadap (Pipeline); v6's image encoder is faster on one thread even alone
    # (2.1-2.3 vs 2.4-2.6 ms, 2026-12-07, Intel Xeon).
    single_thread_batch_one: tuple[str, ...] = (
        "image_encoder", "face_encoder", "latents", "kadap", "perception"
    )  # fmt: skip


_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(config: SessionConfig) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = _LEVELS[config.graph_optimization]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    threads = config.intra_op_threads or int(os.environ.get("KCDP_THREADS", "0"))
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = config.inter_op_threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.allow_spinning else "0")
    opts.log_severity_level = 3  # onnxruntime's own warnings (e.g. unused initialisers) are noise here
    return opts


def candidate_providers(config: SessionConfig) -> list[str]:
    """Requested providers, in preference order, restricted to what this onnxruntime build has."""
    available = set(ort.get_available_providers())
    wanted = [_ALIASES.get(p.lower(), p) for p in config.providers] if config.providers else list(PREFERENCE)
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")  # always the last resort
    return chosen


def _provider_entry(name: str, config: SessionConfig) -> str | tuple[str, dict[str, Any]]:
    options = dict(config.provider_options.get(name, {}))
    if name == "TensorrtExecutionProvider" and config.tensorrt_cache:
        options.setdefault("trt_engine_cache_enable", True)
        options.setdefault("trt_engine_cache_path", config.tensorrt_cache)
    return (name, options) if options else name


class BatchOneSession:
    """A graph run through a batch-1 specialisation for single images and the dynamic graph for
    batches (created on the first batch). Quacks like an InferenceSession for what the runtime uses."""

    def __init__(self, make: Any):
        self._make = make  # make(batch_one: bool) -> InferenceSession
        self.one = make(True)
        self._any: ort.InferenceSession | None = None

    def session_for(self, feed: dict[str, Any]) -> ort.InferenceSession:
        if len(next(iter(feed.values()))) == 1:
            return self.one
        if self._any is None:
            self._any = self._make(False)
        return self._any

    def run(self, output_names: Any, input_feed: dict[str, Any], run_options: Any = None) -> list:
        return self.session_for(input_feed).run(output_names, input_feed, run_options)

    def __getattr__(self, name: str) -> Any:  # get_inputs, get_outputs, get_providers, ...
        return getattr(self.one, name)


def create_session(
    path: Path,
    config: SessionConfig,
    digest: str | None = None,
    batch_axes: list[str] | None = None,
    name: str | None = None,
) -> ort.InferenceSession | BatchOneSession:
    """A session on the best provider that works, falling back down the list on failure.

    On the CPU, a graph with a known sha256 (`digest`) is loaded from the pre-optimised ORT-format
    cache when there (see optimized_graph), and, given the names of its symbolic batch axes (the
    manifest's graph inputs), single images run a batch-1 specialisation (SessionConfig.batch_one),
    on one thread for the graphs `name`d in SessionConfig.single_thread_batch_one."""
    if batch_axes and config.batch_one and candidate_providers(config) == ["CPUExecutionProvider"]:
        axes = sorted(batch_axes)
        single = replace(config, intra_op_threads=1) if name in config.single_thread_batch_one else config
        return BatchOneSession(
            lambda one: _create(path, single if one else config, digest, axes if one else [])
        )
    return _create(path, config, digest, [])


def _create(path: Path, config: SessionConfig, digest: str | None, fixed: list[str]) -> ort.InferenceSession:
    opts = session_options(config)
    for axis in fixed:
        opts.add_free_dimension_override_by_name(axis, 1)
    candidates = candidate_providers(config)
    if digest and config.graph_cache and candidates == ["CPUExecutionProvider"]:
        cached = optimized_graph(path, digest, config, fixed)
        if cached is not None:
            path = cached
    errors = []
    for i, _name in enumerate(candidates):
        providers = [_provider_entry(p, config) for p in candidates[i:]]
        try:
            return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # noqa: BLE001 - a provider failing to initialise must not stop the CPU path
            errors.append(f"{candidates[i]}: {exc}")
            log.debug("%s: %s failed (%s), falling back", path.name, candidates[i], exc)
    raise RuntimeError(f"{path}: no execution provider could load this graph: {'; '.join(errors)}")


def active_provider(session: ort.InferenceSession | BatchOneSession) -> str:
    return session.get_providers()[0]


def describe(sessions: dict[str, ort.InferenceSession], config: SessionConfig) -> str:
    """The one log line: which provider each graph actually runs on, and what was asked for."""
    ran = {name: SHORT.get(active_provider(s), active_provider(s)) for name, s in sessions.items()}
    kinds = sorted(set(ran.values()))
    where = kinds[0] if len(kinds) == 1 else ", ".join(f"{n}={p}" for n, p in ran.items())
    asked = " > ".join(SHORT.get(p, p) for p in candidate_providers(config))
    threads = config.intra_op_threads or os.environ.get("KCDP_THREADS") or "auto"
    return f"execution provider: {where} (tried {asked}; intra-op threads {threads})"


def optimized_graph(
    path: Path, digest: str, config: SessionConfig, fixed: list[str] | None = None
) -> Path | None:
    """The graph after onnxruntime's portable (extended) optimisations, saved once in ORT format.

    Keyed by the graph's sha256, the onnxruntime version and the axes fixed to 1 (a batch-1 copy
    keeps its folded shapes); the remaining hardware-specific optimisations still run at load.
    Written atomically; None (use the .onnx) if it cannot be made.
    """
    root = cache_root() / "ort"
    suffix = "".join(f"-{axis}1" for axis in fixed or [])
    target = root / f"{digest[:32]}{suffix}-ort{ort.__version__}.ort"
    if target.is_file():
        return target
    tmp = root / f".{target.stem}.{os.getpid()}.tmp.ort"
    try:
        root.mkdir(parents=True, exist_ok=True)
        opts = session_options(config)
        for axis in fixed or []:
            opts.add_free_dimension_override_by_name(axis, 1)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(tmp)
        opts.add_session_config_entry("session.save_model_format", "ORT")
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        os.replace(tmp, target)
        return target
    except Exception as exc:  # noqa: BLE001 - the cache only saves time; the .onnx always works
        log.debug("%s: no optimised ORT copy (%s)", path.name, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return None
