"""ApplyMasksPass: the pruned model is the input model with masked weights set to zero.

Only the initializers of prunable weights change; every other constant, node and attribute
is left as it was, and the weight keeps its dtype and name.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxflow.errors import OnnxflowError
from onnxflow.pipeline import Pass, PruneState
from onnxflow.tensors import read_stored, rewrite_stored

# Highest IR version every supported onnxruntime accepts (onnx >= 1.17 writes newer ones).
MAX_IR_VERSION = 10


def apply_masks(model: onnx.ModelProto, masks: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose weights named in `masks` are zero where the mask is False."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    for name, mask in masks.items():
        try:
            values = read_stored(pruned, name).copy()
        except KeyError:
            raise OnnxflowError(f"weight {name!r} is not stored in the model") from None
        values[~mask.reshape(values.shape)] = 0
        rewrite_stored(pruned, name, values)
    needed = onnx.helper.find_min_ir_version_for(list(pruned.opset_import), True)
    if pruned.ir_version > max(MAX_IR_VERSION, needed):
        pruned.ir_version = max(MAX_IR_VERSION, needed)
    return pruned


class ApplyMasksPass(Pass):
    requires = ("model", "masks")
    provides = ("pruned",)

    def run(self, state: PruneState) -> None:
        assert state.model is not None and state.masks is not None
        state.pruned = apply_masks(state.model, state.masks)
