"""onnxruntime sessions: execution-provider choice (TensorRT > CUDA > CPU, with fallback) and options.

The first provider that actually builds a session wins: onnxruntime lists TensorRT/CUDA as
"available" whenever the GPU wheel is installed, even on a machine without the driver, so a
provider is only trusted after a session was created with it and reports it as active.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

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
    graph_optimization: str = "all"  # disable | basic | extended | all
    tensorrt_cache: str | None = None  # engine cache folder (TensorRT builds take minutes)
    provider_options: dict[str, dict[str, Any]] = field(default_factory=dict)


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


def create_session(path: Path, config: SessionConfig) -> ort.InferenceSession:
    """A session on the best provider that works, falling back down the list on failure."""
    opts = session_options(config)
    candidates = candidate_providers(config)
    errors = []
    for i, _name in enumerate(candidates):
        providers = [_provider_entry(p, config) for p in candidates[i:]]
        try:
            return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # noqa: BLE001 - a provider failing to initialise must not stop the CPU path
            errors.append(f"{candidates[i]}: {exc}")
            log.debug("%s: %s failed (%s), falling back", path.name, candidates[i], exc)
    raise RuntimeError(f"{path}: no execution provider could load this graph: {'; '.join(errors)}")


def active_provider(session: ort.InferenceSession) -> str:
    return session.get_providers()[0]


def describe(sessions: dict[str, ort.InferenceSession], config: SessionConfig) -> str:
    """The one log line: which provider each graph actually runs on, and what was asked for."""
    ran = {name: SHORT.get(active_provider(s), active_provider(s)) for name, s in sessions.items()}
    kinds = sorted(set(ran.values()))
    where = kinds[0] if len(kinds) == 1 else ", ".join(f"{n}={p}" for n, p in ran.items())
    asked = " > ".join(SHORT.get(p, p) for p in candidate_providers(config))
    threads = config.intra_op_threads or os.environ.get("KCDP_THREADS") or "auto"
    return f"execution provider: {where} (tried {asked}; intra-op threads {threads})"
