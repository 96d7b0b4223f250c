"""The same kcdp-train command on two processes (torchrun, gloo on CPU): what `accelerate launch` does
on several GPUs. The trainer checks after every epoch that the processes hold identical weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from train_data import make_domain

pytest.importorskip("accelerate")

TRAIN = "from kcdp_core.train.cli import train_main; raise SystemExit(train_main())"


def test_two_processes_train_one_model(tmp_path) -> None:
    from kcdp_core.model.kcdp import KCDPModel

    src = make_domain(tmp_path / "src", (250, 200, 40), per_class=4, seed=0)
    tgt = make_domain(tmp_path / "tgt", (255, 255, 255), per_class=2, seed=1)
    out = tmp_path / "out"
    script = tmp_path / "train.py"
    script.write_text(TRAIN + "\n")
    env = {**os.environ, "KCDP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port: a fixed one can be held by another run on the machine
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
        str(script), "--preset", "tiny", "--source", str(src), "--target", str(tgt), "--out", str(out),
        "--epochs", "2", "--batch-size", "4", "--seed", "3", "--quiet", "--threads", "1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One process reports: one config, one result line, one log line per epoch.
    assert proc.stdout.count('"preset": "tiny"') == 1
    assert proc.stdout.count('"best_epoch"') == 1
    assert proc.stderr.count("epoch 2/2:") == 1

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    # 7 classes x 4 images, one per class to validation -> 21 training images -> 5 full batches of 4,
    # sharded over 2 processes in whole rounds (drop_last) -> 2 steps per process and epoch.
    per_process = (21 // 4) // 2
    assert epochs[-1]["step"] == 2 * per_process
    # The pseudo-label histogram sums both processes' target batches; no threshold keeps them all.
    assert sum(epochs[0]["pseudo_label_counts"].values()) == 2 * per_process * 4
    assert epochs[0]["train_kept_t"] == 1.0  # a mean over this process's steps
    model = KCDPModel.from_pretrained(out / "best")
    assert model.config.train.epochs == 2
