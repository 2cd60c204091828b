"""onnxflow: framework-agnostic SynFlow pruning of ONNX models."""
