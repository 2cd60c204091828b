"""The pruned model is the input model with masked weights set to zero.

Only the initializers of prunable weights change; every other constant, node and attribute
is left as it was, and the weight keeps its dtype and name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxflow.errors import OnnxflowError
from onnxflow.external import is_external, read_external
from onnxflow.tensors import read_stored, rewrite_stored

# Highest IR version every supported onnxruntime accepts (onnx >= 1.17 writes newer ones).
MAX_IR_VERSION = 10


def apply_masks(
    model: onnx.ModelProto,
    masks: dict[str, np.ndarray],
    base_dir: Path | None = None,
    *,
    in_place: bool = False,
) -> onnx.ModelProto:
    """`model` (or a copy) with the weights named in `masks` zero where the mask is False.

    Tensors still in external files (in `base_dir`) are read one at a time and stored in the
    result, so it is complete in memory; `save` writes large ones back to a data file.
    """
    if in_place:
        pruned = model
    else:
        pruned = onnx.ModelProto()
        pruned.CopyFrom(model)
    for name, mask in masks.items():
        try:
            values = np.array(read_stored(pruned, name, base_dir))
        except KeyError:
            raise OnnxflowError(f"weight {name!r} is not stored in the model") from None
        values[~mask.reshape(values.shape)] = 0
        rewrite_stored(pruned, name, values)
        del values
    for t in pruned.graph.initializer:
        if is_external(t) and base_dir is not None:
            t.CopyFrom(numpy_helper.from_array(read_external(t, base_dir), t.name))
    needed = onnx.helper.find_min_ir_version_for(list(pruned.opset_import), True)
    if pruned.ir_version > max(MAX_IR_VERSION, needed):
        pruned.ir_version = max(MAX_IR_VERSION, needed)
    return pruned
