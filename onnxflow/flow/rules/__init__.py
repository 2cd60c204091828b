"""Built-in flow rules, one module per family of ops. Importing registers them."""

from onnxflow.flow.rules import (
    coverage,
    einsum,
    elementwise,
    indexing,
    linear,
    movement,
    normalization,
    norms,
    pooling,
    resample,
    selection,
    shape,
)

__all__ = [
    "coverage",
    "einsum",
    "elementwise",
    "indexing",
    "linear",
    "movement",
    "normalization",
    "norms",
    "pooling",
    "resample",
    "selection",
    "shape",
]
