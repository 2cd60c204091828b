"""Where a model stores its weights: initializers, or `Constant` nodes in old exports.

Masks are keyed by the stored tensor's name; these helpers read and rewrite it in place of
the original, whichever kind of storage it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxflow.external import is_external, read_external


def _constant_value(node: onnx.NodeProto) -> onnx.AttributeProto | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    return next((a for a in node.attribute if a.name == "value"), None)


def stored_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Names of tensors the model stores: initializers and outputs of Constant(value=...)."""
    names = {t.name for t in model.graph.initializer}
    names.update(n.output[0] for n in model.graph.node if _constant_value(n) is not None)
    return names


def rewrite_stored(model: onnx.ModelProto, name: str, values: np.ndarray) -> None:
    """Replace the stored tensor `name` (same dtype and shape) in `model`, in place."""
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(values, name))
            return
    for node in model.graph.node:
        attr = _constant_value(node)
        if attr is not None and node.output[0] == name:
            attr.t.CopyFrom(numpy_helper.from_array(values, attr.t.name))
            return
    raise KeyError(name)


def read_stored(model: onnx.ModelProto, name: str, base_dir: Path | None = None) -> np.ndarray:
    """The stored tensor's values (from its external file, in `base_dir`, if it is there)."""
    for t in model.graph.initializer:
        if t.name == name:
            if is_external(t) and base_dir is not None:
                return read_external(t, base_dir)
            return numpy_helper.to_array(t)
    for node in model.graph.node:
        attr = _constant_value(node)
        if attr is not None and node.output[0] == name:
            return numpy_helper.to_array(attr.t)
    raise KeyError(name)
