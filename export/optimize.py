"""onnxruntime's transformer optimizer on the exported text encoder (the field's tool for BERT/CLIP
graphs: fused SkipLayerNormalization, BiasGelu and, where the pattern matches, Attention).

Applied to the fp32 graph before validation, so the usual parity check against PyTorch judges the
optimised graph; a graph the optimizer cannot handle (or that misses parity) ships unoptimised."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

# transformers model_type -> the optimizer's model type (others are left alone)
MODEL_TYPES = {"bert": "bert", "clip_text_model": "clip", "clip": "clip"}


def optimize_transformer(path: Path, model_type: str, num_heads: int, hidden_size: int) -> dict | None:
    """Rewrite `path` in place with the fused graph; returns the fused-operator counts, or None."""
    kind = MODEL_TYPES.get(model_type)
    if kind is None:
        return None
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        model = optimize_model(
            str(path),
            model_type=kind,
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=1,
            use_gpu=False,
        )
    fused = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    if not fused:
        return None
    model.save_model_to_file(str(path))
    return fused
