"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: its models are too small to gain from intra-op threads, and on
    a busy shared CPU extra threads only contend (measured: ~230 ms per tiny training step with 1
    thread, 1-3 s with 2 under load)."""
    import torch  # here, not at the top: the runtime tests must be collectable without torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
