"""The latency report of kcdp-bench: the machine it ran on, a markdown table, a per-stage plot."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from kcdp_runtime.pipeline import STAGES


def machine() -> str:
    model, cores = platform.processor() or "?", os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "CPU(s)":
                cores = int(value.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    import onnxruntime

    return (
        f"{model}, {cores} cores, Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}"
    )



def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"### Latency: `{report['preset']}` export, {report['date']}",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Images: {report['images']} from {report['images_dir']}; ms per image, p50 / p95; ONNX rows without the knowledge memo "
        "unless marked +memo.",
        "",
        "| engine | batch | " + " | ".join(STAGES) + " | total | images/s |",
        "|---|---:|" + "---:|" * (len(STAGES) + 2),
    ]
    for name, engine in report["engines"].items():
        for run in engine["runs"]:
            cells = [
                f"{run['stages'][s]['p50']:.2f} / {run['stages'][s]['p95']:.2f}" for s in (*STAGES, "total")
            ]
            lines.append(
                f"| {name} | {run['batch']} | " + " | ".join(cells) + f" | {run['images_per_s']:.1f} |"
            )
    lines.append("")
    for name, engine in report["engines"].items():
        if "cold" in engine and "error" in engine["cold"]:
            lines.append(f"- {name}: cold start failed ({engine['cold']['error']})")
        elif "cold" in engine:
            cold = engine["cold"]
            lines.append(f"- {name}: cold start {cold['first_result_s']:.2f} s (process start to first result, median of "
                         f"{report['cold_repeats']}), peak RSS {cold['peak_rss_mib']:.0f} MiB (batch 1, all images)")  # fmt: skip
        if engine.get("note"):
            lines.append(f"- {name}: {engine['note']}")
    for key, value in report.get("speedups", {}).items():
        lines.append(f"- speed-up, total p50 at batch 1, {key}: {value:.2f}x")
    if report.get("load_average"):
        lines.append(f"- load average at the end (1, 5, 15 min): {', '.join(report['load_average'])}")
    if report.get("figure"):
        lines.append(f"- figure: {report['figure']}")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    batches = sorted({run["batch"] for e in report["engines"].values() for run in e["runs"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4), squeeze=False)
    names = list(report["engines"])
    width = 0.8 / max(1, len(names))
    for ax, batch in zip(axes[0], batches, strict=True):
        for n, name in enumerate(names):
            run = next((r for r in report["engines"][name]["runs"] if r["batch"] == batch), None)
            if run is None:
                continue
            values = [max(run["stages"][s]["p50"], 1e-3) for s in STAGES]
            ax.bar(np.arange(len(STAGES)) + n * width, values, width, label=name)
        ax.set_xticks(np.arange(len(STAGES)) + width * (len(names) - 1) / 2, STAGES, rotation=30)
        ax.set_yscale("log")
        ax.set_ylabel("ms per image (p50)")
        ax.set_title(f"{report['preset']}: batch {batch}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

