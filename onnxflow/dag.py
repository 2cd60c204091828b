"""The weight-layer DAG: which constant weights are prunable, and which layers feed which.

Kept apart from the flow engine (how scores are computed) and from mask rewriting (how
tensors change), as Torch-Pruning keeps its dependency graph apart from importance and pruning.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

# op type -> input positions that may hold the prunable weight.
PRUNABLE_OPERANDS: dict[str, tuple[int, ...]] = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "Gemm": (1, 0),
    "MatMul": (1, 0),
}


@dataclass
class WeightLayer:
    """One prunable weight tensor and the nodes that use it."""

    name: str
    """Initializer name: the key of masks and scores."""
    op: str
    nodes: list[str]
    shape: tuple[int, ...]
    feeds_from: list[str] = field(default_factory=list)
    """Names of the weight layers whose outputs reach this layer's input directly."""

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class WeightDag:
    """Prunable layers in network order, and for each node the weight operand it uses."""

    layers: list[WeightLayer]
    weight_inputs: dict[str, int]
    """Node name -> position of its prunable weight input."""

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    def layer(self, name: str) -> WeightLayer:
        return next(layer for layer in self.layers if layer.name == name)


def is_float_constant(t: gs.Tensor | None) -> bool:
    return isinstance(t, gs.Constant) and np.issubdtype(np.dtype(t.dtype), np.floating)


def prunable_operand(node: gs.Node, stored: Container[str]) -> int | None:
    """Position of the node's prunable weight, or None if it has none.

    Only weights stored in the model (`stored`: initializer names) can be masked.
    """
    if (node.domain or "") not in ("", "ai.onnx"):
        return None
    for pos in PRUNABLE_OPERANDS.get(node.op, ()):
        if pos >= len(node.inputs) or not is_float_constant(node.inputs[pos]):
            continue
        if node.inputs[pos].name not in stored:
            continue
        others = [t for i, t in enumerate(node.inputs[:2]) if i != pos]
        if all(isinstance(t, gs.Variable) for t in others):
            return pos
    return None


def build_weight_dag(graph: gs.Graph, stored: Container[str]) -> WeightDag:
    """Find the prunable weights of a toposorted graph and the layer-to-layer edges."""
    layers: dict[str, WeightLayer] = {}
    weight_inputs: dict[str, int] = {}
    upstream: dict[str, set[str]] = {}  # tensor name -> nearest weight layers before it
    for node in graph.nodes:
        feeding = set().union(*(upstream.get(t.name, set()) for t in node.inputs if t is not None))
        pos = prunable_operand(node, stored)
        if pos is None:
            for t in node.outputs:
                upstream[t.name] = feeding
            continue
        w = node.inputs[pos]
        weight_inputs[node.name] = pos
        layer = layers.get(w.name)
        if layer is None:
            layer = layers[w.name] = WeightLayer(w.name, node.op, [], tuple(w.shape))
        layer.nodes.append(node.name)
        layer.feeds_from = sorted(set(layer.feeds_from) | feeding - {w.name})
        for t in node.outputs:
            upstream[t.name] = {w.name}
    return WeightDag(list(layers.values()), weight_inputs)
