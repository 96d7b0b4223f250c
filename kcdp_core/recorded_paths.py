"""Paths as RESULTS.md, the README and shipped manifests name them: the folders of $DATA / $RUNS
(when set) written as those variables, not as this machine's paths. Torch-free: the export uses it too."""

from __future__ import annotations

import os
from pathlib import Path


def with_path_variables(text: str) -> str:
    """`text` with every occurrence of $RUNS's and $DATA's folder replaced by the variable's name."""
    for var in ("RUNS", "DATA"):
        folder = os.environ.get(var, "").rstrip("/")
        if folder:
            text = text.replace(folder, f"${var}")
    return text


def recorded_path(path: str | Path) -> str:
    """A path for a record that ships (an export's manifest): relative to the working directory
    when under it (the repository), else with $DATA / $RUNS written as variables."""
    resolved = Path(path).resolve()
    if resolved.is_relative_to(Path.cwd()):
        return resolved.relative_to(Path.cwd()).as_posix()
    return with_path_variables(str(resolved))
