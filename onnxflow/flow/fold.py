"""Fold each BatchNormalization into the convolution before it.

In the positive linearization a BatchNormalization is a positive factor s per channel. When
it directly follows a Conv whose prunable weight W serves that Conv alone, the factor can
move into the weight: the flow model is fed |W| * s (s along W's output-channel axis) and
the BatchNormalization passes flow unchanged. R and every score stay the same, since R is
linear in each output channel's weights (|W|s * dR/d(|W|s) = |W| * dR/d|W|), and two
activation-sized multiplications per BatchNormalization (forward and backward) disappear.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxflow.dag import WeightDag
from onnxflow.flow.zero_init import ones_if_zero_init


def batchnorm_folds(graph: gs.Graph, dag: WeightDag) -> tuple[dict[str, np.ndarray], set[int]]:
    """Factors to multiply into prunable weights (weight name -> array broadcasting over the
    weight) and the ids of the BatchNormalization nodes that then pass flow unchanged."""
    weights = {layer.name for layer in dag.layers}
    outputs = {id(t) for t in graph.outputs}
    factors: dict[str, np.ndarray] = {}
    folded: set[int] = set()
    for bn in graph.nodes:
        if bn.op != "BatchNormalization" or len(bn.inputs) < 5:
            continue
        x, gamma, var = bn.inputs[0], bn.inputs[1], bn.inputs[4]
        conv = x.inputs[0] if len(x.inputs) == 1 else None
        if (
            conv is None
            or conv.op != "Conv"
            or len(x.outputs) != 1
            or id(x) in outputs
            or any(t.outputs or id(t) in outputs for t in bn.outputs[1:])
            or not isinstance(gamma, gs.Constant)
            or not isinstance(var, gs.Constant)
        ):
            continue
        w = conv.inputs[1]
        if w.name not in weights or len(w.outputs) != 1 or w.name in factors:
            continue
        eps = float(bn.attrs.get("epsilon", 1e-5))
        gamma = ones_if_zero_init(gamma, dag.read_as_ones)
        s = np.abs(np.asarray(gamma.values, np.float64)) / np.sqrt(
            np.asarray(var.values, np.float64) + eps
        )
        if s.shape != (w.shape[0],) or not np.all(np.isfinite(s)) or not np.all(s > 0):
            continue
        factors[w.name] = s.astype(np.float32).reshape(-1, *[1] * (len(w.shape) - 1))
        folded.add(id(bn))
    return factors, folded
