"""Built-in flow rules, one module per family of ops. Importing registers them."""

from onnxflow.flow.rules import elementwise, linear, pooling, shape

__all__ = ["elementwise", "linear", "pooling", "shape"]
