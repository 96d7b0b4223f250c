"""benchmarks/accuracy.py is a script, not a package module: the tests that call its functions load it here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"


def load_accuracy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["accuracy"] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module
