"""The weight-layer DAG of an analysis graph: the prunable weights and how layers connect.

Not a pass (it does not transform the graph): the last step of `onnxflow.analyze.analyze`."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import NamedTuple

import onnx_graphsurgeon as gs

from onnxflow.dag import (
    WeightDag,
    WeightLayer,
    build_weight_dag,
    quantized_weight_node,
    tie_lookup_copies,
)
from onnxflow.errors import OnnxflowError, Opt
from onnxflow.flow.zero_init import ZeroInit, find_zero_init


def _matches(layer: WeightLayer, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(n, pattern) for n in (layer.name, *layer.nodes))


class PrunableWeights(NamedTuple):
    dag: WeightDag
    excluded: list[WeightLayer]
    """Prunable layers matched by an `exclude` pattern: left out of `dag`."""
    exclude_unmatched: list[str]
    """`exclude` patterns that matched no prunable layer."""
    zero_init: ZeroInit
    """The zero-initialized tensors read as ones (empty unless `zero_init == "ones"`)."""


def prunable_weights(
    graph: gs.Graph,
    stored: set[str],
    *,
    exclude: Sequence[str] = (),
    zero_init: str = "ones",
    label: str = "model",
) -> PrunableWeights:
    """The DAG of the weights to prune; a model with nothing to prune is an error.

    `stored`: names of the tensors the model stores; `label` names the model in errors."""
    quantized = quantized_weight_node(graph)
    if quantized is not None:
        raise OnnxflowError(
            f"{label} has quantized weights (node {quantized.name!r}, "
            f"{quantized.op}); onnxflow prunes float models: prune before quantizing"
        )
    copies = tie_lookup_copies(graph, stored)
    dag = build_weight_dag(graph, stored)
    dag.copies = {c: v for c, v in copies.items() if any(v[0] == x.name for x in dag.layers)}
    excluded: list[WeightLayer] = []
    unmatched: list[str] = []
    patterns = tuple(exclude)
    if patterns:
        excluded = [x for x in dag.layers if any(_matches(x, p) for p in patterns)]
        unmatched = [p for p in patterns if not any(_matches(x, p) for x in dag.layers)]
        dag.layers = [x for x in dag.layers if x not in excluded]
    zero = ZeroInit()
    if zero_init == "ones":
        zero = find_zero_init(graph, stored)
        # An all-zero weight has nothing to prune: it leaves N, and flow crosses it as ones.
        dag.layers = [layer for layer in dag.layers if layer.name not in zero.weights]
        dag.read_as_ones = zero.names
    if not dag.layers:
        raise OnnxflowError(
            "{source} has no prunable weights "
            "(constant weights of Conv, ConvTranspose, Gemm or MatMul"
            + (", not excluded by {opt}" if patterns else "")
            + (", not all zero" if zero.weights else "")
            + ")",
            source=label,
            opt=Opt("exclude", patterns),
        )
    return PrunableWeights(dag, excluded, unmatched, zero)
