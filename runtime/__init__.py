"""kcdp_runtime: torch-free inference from an export folder (onnxruntime).

    from kcdp_runtime import Pipeline
    results = Pipeline.from_pretrained().run(["sticker.png"])  # the embedded default model

The names below load on first use, so that `import kcdp_runtime.manifest` (and `kcdp-infer --help`)
stays free of onnxruntime.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ModelError", "Pipeline", "SessionConfig"]
_WHERE = {"Pipeline": "pipeline", "SessionConfig": "sessions", "ModelError": "manifest"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'kcdp_runtime' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"kcdp_runtime.{_WHERE[name]}"), name)
