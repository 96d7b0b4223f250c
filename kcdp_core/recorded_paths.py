"""Paths as RESULTS.md and the README name them: the folders of $DATA / $RUNS (when set) written as
those variables, not as this machine's paths. Torch-free: the export's benchmark uses it too."""

from __future__ import annotations

import os


def with_path_variables(text: str) -> str:
    """`text` with every occurrence of $RUNS's and $DATA's folder replaced by the variable's name."""
    for var in ("RUNS", "DATA"):
        folder = os.environ.get(var, "").rstrip("/")
        if folder:
            text = text.replace(folder, f"${var}")
    return text
