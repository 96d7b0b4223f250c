"""A run killed with SIGKILL mid-epoch and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_data import make_domain, slowed_training_steps

TRAIN = "from kcdp_core.train.cli import train_main; raise SystemExit(train_main())"
# The same run with a pause after every training step, so that the test can kill it mid-epoch.
SLOW_TRAIN = slowed_training_steps(0.4) + TRAIN


def _args(src, tgt, out) -> list[str]:
    return [
        "--preset", "tiny", "--source", str(src), "--target", str(tgt), "--out", str(out),
        "--epochs", "3", "--batch-size", "4", "--seed", "5", "--quiet", "--threads", "1",
    ]  # fmt: skip


def _rows(folder) -> list[dict]:
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, monkeypatch) -> None:
    from kcdp_core.train.cli import train_main

    monkeypatch.setenv("KCDP_CACHE", str(tmp_path / "cache"))
    src = make_domain(tmp_path / "src", (250, 200, 40), per_class=3, seed=0)
    tgt = make_domain(tmp_path / "tgt", (255, 255, 255), per_class=2, seed=1)
    threads = torch.get_num_threads()
    try:  # the uninterrupted run, in-process (also fills the caches the subprocesses reuse)
        assert train_main(_args(src, tgt, tmp_path / "full")) == 0
    finally:
        torch.set_num_threads(threads)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_TRAIN, *_args(src, tgt, out)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(r["kind"] == "step" and r["epoch"] == 2 for r in _rows(out)):
                break  # epoch 1 is checkpointed and epoch 2 is under way
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads((out / "train_state.json").read_text())["epoch"] == 1
    assert any(r["kind"] == "step" and r["epoch"] == 2 for r in _rows(out))  # killed mid-epoch 2

    done = subprocess.run(
        [sys.executable, "-c", TRAIN, *_args(src, tgt, out), "--resume"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stderr

    full_rows, resumed_rows = _rows(tmp_path / "full"), _rows(out)
    assert len(full_rows) == len(resumed_rows) > 6
    assert resumed_rows == full_rows  # every logged loss, lr, validation metric and pseudo-label count
    for name in ("model.safetensors", "best/model.safetensors"):
        assert (out / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    state = json.loads((out / "train_state.json").read_text())
    assert (
        state["epoch"] == 3
        and state["step"] == json.loads((tmp_path / "full" / "train_state.json").read_text())["step"]
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_mixed_precision_smoke(tmp_path, monkeypatch) -> None:
    from kcdp_core.train.cli import train_main
    from kcdp_core.train.evaluate import evaluate_checkpoint

    monkeypatch.setenv("KCDP_CACHE", str(tmp_path / "cache"))
    src = make_domain(tmp_path / "src", (250, 200, 40), per_class=3, seed=0)
    tgt = make_domain(tmp_path / "tgt", (255, 255, 255), per_class=2, seed=1)
    args = _args(src, tgt, tmp_path / "gpu")
    args[args.index("--epochs") + 1] = "1"
    assert train_main([*args, "--mixed-precision", "auto"]) == 0
    config = json.loads((tmp_path / "gpu" / "config.json").read_text())
    assert config["train"]["mixed_precision"] in ("bf16", "fp16")
    report = evaluate_checkpoint(tmp_path / "gpu" / "best", tgt)
    assert report["n"] == 14 and 0.0 <= report["accuracy"] <= 1.0
