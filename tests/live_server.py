"""A real `kcdp-serve` (uvicorn) on a free loopback port, for the tests that need the server itself."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(*args: str, cwd: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """(base URL, process) of `python -m kcdp_runtime.serve ARGS` once /health answers; stopped on exit.
    Its stderr stays readable after the block (the tests read its log lines)."""
    port = free_port()
    cmd = [sys.executable, "-m", "kcdp_runtime.serve", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"kcdp-serve did not start: {proc.stderr.read().decode()}")
            time.sleep(0.1)
        else:
            pytest.fail("kcdp-serve did not answer /health within a minute")
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)
