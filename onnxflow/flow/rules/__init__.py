"""Built-in flow rules, one module per family of ops. Importing registers them."""

from onnxflow.flow.rules import (
    elementwise,
    indexing,
    linear,
    normalization,
    pooling,
    resample,
    selection,
    shape,
)

__all__ = [
    "elementwise",
    "indexing",
    "linear",
    "normalization",
    "pooling",
    "resample",
    "selection",
    "shape",
]
