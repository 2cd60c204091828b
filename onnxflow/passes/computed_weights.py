"""Weights that the graph computes from stored tensors: left dense, flowed through as they are.

Weight standardization (BiT's StdConv, NFNets' ScaledStdConv: `(W - mean(W)) / std(W) * gain`)
and weight normalization (`g * v / ||v||`) compute a layer's effective weight from stored
tensors in the graph. Zeroing entries of the stored tensor does not zero the effective
weight (a masked entry becomes `-mean/std`, and the statistics change), so such a layer
cannot be pruned by masking what is stored. onnxflow therefore evaluates the effective
weight once (it depends on constants only: constant folding computes it), lets the flow
pass through its magnitude |W_eff| like any fixed linear map, leaves the layer dense (it is
not a prunable weight, so it is not counted in the sparsity) and names it in one note.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxflow.dag import (
    PRUNABLE_OPERANDS,
    WEIGHT_VIEW_OPS,
    computed_operand,
    is_float_constant,
)
from onnxflow.errors import some_names


def _chain(t: gs.Tensor | None) -> tuple[list[gs.Node], gs.Tensor | None]:
    """The view nodes from a weight operand back to what they view, and that tensor."""
    nodes = []
    while isinstance(t, gs.Variable) and len(t.inputs) == 1:
        producer = t.inputs[0]
        if producer.op not in WEIGHT_VIEW_OPS or (producer.domain or "") not in ("", "ai.onnx"):
            break
        nodes.append(producer)
        t = producer.inputs[0] if producer.inputs else None
    return nodes, t


def _is_stored(t: gs.Tensor | None) -> bool:
    """A tensor the model stores: an initializer, or the output of a Constant node."""
    if isinstance(t, gs.Constant):
        return True
    return isinstance(t, gs.Variable) and len(t.inputs) == 1 and t.inputs[0].op == "Constant"


def computed_weight_views(graph: gs.Graph) -> set[str]:
    """Names of view nodes (Reshape, Transpose, ...) that lead to a weight operand from a
    computed tensor: constant folding must evaluate them too, so that the layer gets its
    effective weight as one constant. (Views of a stored weight are kept: the mask keys by
    the stored tensor's name.)"""
    found: set[str] = set()
    for node in graph.nodes:
        if (node.domain or "") not in ("", "ai.onnx"):
            continue
        for pos in PRUNABLE_OPERANDS.get(node.op, ()):
            nodes, root = _chain(node.inputs[pos] if pos < len(node.inputs) else None)
            if nodes and not _is_stored(root):
                found.update(n.name for n in nodes)
    return found


def computed_weight_layers(graph: gs.Graph, stored: set[str]) -> list[str]:
    """Names of the weight-layer nodes of a folded graph whose weight operand is a float
    constant that the graph computed (folding made it), not a tensor the model stores."""
    return [node.name for node in graph.nodes if computed_operand(node, stored) is not None]


def computed_weights_note(graph: gs.Graph, model_stored: set[str]) -> str | None:
    """The one-line note naming the layers left dense, or None if there are none."""
    layers = computed_weight_layers(graph, model_stored)
    if not layers:
        return None
    shown = some_names(layers)
    return (
        f"{len(layers)} layer{'s' if len(layers) > 1 else ''} with weights computed in the "
        f"graph (weight standardization or normalization) left dense: {shown}"
    )


def constant_factor_nodes(graph: gs.Graph) -> list[str]:
    """Names of the Einsum nodes of a folded graph with a float constant operand beside a
    computed one (MViTv2's relative-position tables, Keras' EinsumDense kernels): the flow
    reads it as its |value|, a fixed factor, never pruned."""
    return [
        node.name
        for node in graph.nodes
        if node.op == "Einsum"
        and (node.domain or "") in ("", "ai.onnx")
        and any(isinstance(t, gs.Variable) for t in node.inputs)
        and any(is_float_constant(t) for t in node.inputs)
    ]


def constant_factors_note(graph: gs.Graph) -> str | None:
    """The one-line note naming the Einsum nodes with constant factors, or None."""
    nodes = constant_factor_nodes(graph)
    if not nodes:
        return None
    shown = some_names(nodes)
    return (
        f"{len(nodes)} Einsum node{'s' if len(nodes) > 1 else ''} with a constant operand "
        "(a position table, or a layer's kernel: export such a layer as MatMul or Gemm to "
        f"prune it) read as a fixed factor, not pruned: {shown}"
    )
