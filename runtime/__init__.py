"""kcdp_runtime: torch-free inference from an export folder (onnxruntime)."""
