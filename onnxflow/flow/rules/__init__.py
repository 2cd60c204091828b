"""Built-in flow rules, one module per family of ops. Importing registers them."""

from onnxflow.flow.rules import (
    einsum,
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
    "einsum",
    "elementwise",
    "indexing",
    "linear",
    "normalization",
    "pooling",
    "resample",
    "selection",
    "shape",
]
