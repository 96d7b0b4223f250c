"""kcdp_export: LoRA merge, ONNX/TensorRT export, parity checks, manifest."""
