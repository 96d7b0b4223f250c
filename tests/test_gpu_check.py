"""benchmarks/gpu_check.py on a CPU: it says no GPU was found (exit 2, JSON written), and a dry run
(--device cpu --small) goes through every phase with the sd15 preset's classes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would measure it")
def test_no_gpu_says_so_and_exits_2(tmp_path, capsys):
    assert _module().main(["--out", str(tmp_path)]) == 2
    assert "no CUDA GPU found" in capsys.readouterr().err
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["status"] == "no_gpu" and "nothing was measured" in report["message"]
    assert report["versions"]["torch"]


def test_cpu_dry_run_goes_through_every_phase(tmp_path):
    args = ["--out", str(tmp_path), "--device", "cpu", "--small", "--image-size", "64", "--batch-size", "2",
            "--steps", "1", "--repeat", "1", "--no-compile"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["status"] == "measured"
    phases = report["phases"]
    assert phases["load"]["knowledge_tokens"] == 154
    assert phases["train"]["steps_per_s"] > 0 and phases["train"]["batch_size"] == 2
    assert phases["perception_eager"]["batch1"]["p50_ms"] > 0
    ort = phases["perception_onnxruntime"]
    assert ort["provider"] == "CPUExecutionProvider" and ort["max_abs_logit_diff_vs_eager_fp32"] < 1e-3
