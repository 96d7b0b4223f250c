"""Validation of every exported graph before the export is called done.

1. onnx.checker full check (types and shapes inferred through the whole graph).
2. onnxruntime against PyTorch on fresh random inputs (batch sizes other than the traced one) and on
   real images: max abs difference per output, label agreement on the label output.
An fp32 graph must match within its tolerance with identical labels; fp16/int8 variants are measured
against the same PyTorch reference and must keep label agreement above a floor. A failure raises
ParityError carrying the figures; nothing is written as done.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from kcdp_export.graphs import GraphConfig

RANDOM_BATCHES = (1, 3)  # the graph was traced at batch 2: check the dynamic axis both ways
REL_TOL = 1e-3  # non-label outputs (states, features) may be large: atol + REL_TOL * |reference|


class ParityError(RuntimeError):
    """An exported graph disagrees with PyTorch; .parity holds the figures."""

    def __init__(self, message: str, parity: Parity):
        super().__init__(message)
        self.parity = parity


@dataclass
class Parity:
    graph: str
    precision: str
    max_abs_diff: float  # on the label output if there is one, else the largest over outputs
    outputs: dict[str, float]  # max abs difference per output
    label_agreement: float | None
    n_random: int
    n_real: int
    atol: float
    passed: bool = True
    failures: list[str] = field(default_factory=list)
    # worst |diff| - (atol + REL_TOL |ref|) per output (> 0 fails fp32); not written to the manifest
    excess: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def inputs(self) -> str:
        return "random+real" if self.n_real else "random"

    def manifest(self) -> dict:
        data = asdict(self)
        data.pop("excess")
        data["inputs"] = self.inputs
        return data

    def summary(self) -> str:
        agree = "" if self.label_agreement is None else f", label agreement {self.label_agreement:.4f}"
        per = ", ".join(f"{k} {v:.3g}" for k, v in self.outputs.items())
        return (
            f"{self.graph} [{self.precision}]: max abs diff {self.max_abs_diff:.3g} ({per}){agree}; "
            f"{self.n_random} random + {self.n_real} real inputs"
        )


def check_model(path: Path) -> None:
    """onnx.checker full check; by path, so graphs with external data are checked too."""
    onnx.checker.check_model(str(path), full_check=True)


def session(path: Path, providers: list[str] | None = None, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def run_onnx(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in wanted}), strict=True))


def random_feeds(graph: GraphConfig, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [graph.dummy(b, rng) for b in RANDOM_BATCHES]


def batched(feeds: dict[str, np.ndarray], size: int) -> Iterable[dict[str, np.ndarray]]:
    n = len(next(iter(feeds.values())))
    for start in range(0, n, size):
        yield {k: v[start : start + size] for k, v in feeds.items()}


def measure(
    graph: GraphConfig,
    sess: ort.InferenceSession,
    random: list[dict[str, np.ndarray]],
    real: list[dict[str, np.ndarray]],
    precision: str = "fp32",
) -> Parity:
    """Max abs difference per output and label agreement, ONNX vs PyTorch, over all batches."""
    diffs = dict.fromkeys(graph.output_names, 0.0)
    excess = dict.fromkeys(graph.output_names, 0.0)  # worst |d| - (atol + REL_TOL |ref|)
    agree = total = 0
    counts = {"random": 0, "real": 0}
    for kind, batches in (("random", random), ("real", real)):
        for feeds in batches:
            ref = graph.run_torch(feeds)
            got = run_onnx(sess, feeds)
            counts[kind] += len(next(iter(feeds.values())))
            for name in graph.output_names:
                d = np.abs(got[name].astype(np.float64) - ref[name])
                diffs[name] = max(diffs[name], float(d.max(initial=0.0)))
                bound = graph.atol + REL_TOL * np.abs(ref[name])
                excess[name] = max(excess[name], float((d - bound).max(initial=-np.inf)))
            if graph.label_output:
                agree += int((graph.labels(got) == graph.labels(ref)).sum())
                total += len(ref[graph.label_output])
    head = graph.label_output or max(diffs, key=diffs.get)
    parity = Parity(
        graph=graph.name,
        precision=precision,
        max_abs_diff=diffs[head],
        outputs=diffs,
        label_agreement=(agree / total) if total else None,
        n_random=counts["random"],
        n_real=counts["real"],
        atol=graph.atol,
        excess=excess,
    )
    return parity


def enforce(parity: Parity, label_output: str | None, min_agreement: float = 1.0) -> Parity:
    """fp32: the label output within atol, other outputs within atol + REL_TOL |ref|, labels identical.
    fp16/int8: label agreement at least min_agreement. Raises ParityError with the figures."""
    failures = []
    if parity.precision == "fp32":
        for name, diff in parity.outputs.items():
            over = diff > parity.atol if name == label_output else parity.excess.get(name, 0.0) > 0
            if over:
                failures.append(f"{name}: max abs diff {diff:.3g} > {parity.atol:g}")
        min_agreement = 1.0
    if parity.label_agreement is not None and parity.label_agreement < min_agreement:
        failures.append(f"label agreement {parity.label_agreement:.4f} < {min_agreement:.4f}")
    parity.failures = failures
    parity.passed = not failures
    if failures:
        raise ParityError(
            f"export refused, parity failed: {parity.summary()}: " + "; ".join(failures), parity
        )
    return parity
