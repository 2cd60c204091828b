"""The weight-layer DAG: which constant weights are prunable, and which layers feed which.

Kept apart from the flow engine (how scores are computed) and from mask rewriting (how
tensors change), as Torch-Pruning keeps its dependency graph apart from importance and pruning.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxflow.external import constant_array

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
    uses: int = 0
    """Multiply-accumulates per weight in one forward pass (output positions it is applied
    at, summed over the nodes that share it): FLOPs = 2 * weights * uses."""
    in_axis: int | None = None
    """Axis of the stored tensor along which the layer reads its inputs (Conv: 1, a MatMul's
    right operand: -2, ...), as a nonnegative index; None where a reshape of the weight or
    nodes that disagree hide it. N:M patterns group weights along this axis."""

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class WeightDag:
    """Prunable layers in network order."""

    layers: list[WeightLayer]
    copies: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    """Stored copies of a layer's tensor (an exporter's folded transpose of a tied embedding
    table): copy name -> (layer name, the permutation that makes the copy from the layer's
    tensor). A copy gets its layer's mask, permuted; it is not a layer of its own."""
    read_as_ones: frozenset[str] = frozenset()
    """Constants the flow model reads as ones: zero-initialized weights and scales
    (onnxflow/flow/zero_init.py); empty under `zero_init="strict"`."""

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    def layer(self, name: str) -> WeightLayer:
        return next(layer for layer in self.layers if layer.name == name)


# Ops through which a stored weight may reach its layer unchanged in value: exporters write
# Identity and Cast, TensorFlow exports transpose and reshape weights in the graph.
WEIGHT_VIEW_OPS = frozenset(
    {"Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
)


def is_float_dtype(dtype: object) -> bool:
    """Whether a graph-surgeon dtype is a float type (False for unknown or object dtypes)."""
    try:
        return bool(np.issubdtype(np.dtype(dtype), np.floating))  # type: ignore[call-overload]
    except TypeError:
        return False


def is_float_constant(t: gs.Tensor | None) -> bool:
    return isinstance(t, gs.Constant) and is_float_dtype(t.dtype)


def _is_default_domain(node: gs.Node) -> bool:
    return (node.domain or "") in ("", "ai.onnx")


def weight_source(t: gs.Tensor | None, stored: Container[str]) -> gs.Constant | None:
    """The stored float constant that `t` is, possibly seen through WEIGHT_VIEW_OPS."""
    while isinstance(t, gs.Variable) and len(t.inputs) == 1:
        node = t.inputs[0]
        if node.op not in WEIGHT_VIEW_OPS or not _is_default_domain(node):
            return None
        if any(isinstance(x, gs.Variable) and x.name for x in node.inputs[1:]):
            return None
        t = node.inputs[0]
    if isinstance(t, gs.Constant) and is_float_constant(t) and t.name in stored:
        return t
    return None


def weight_view_nodes(graph: gs.Graph) -> set[str]:
    """Names of WEIGHT_VIEW_OPS nodes on the way to a weight operand, which constant folding
    must keep so the weight is still the stored tensor (its mask keys by that name)."""
    keep: set[str] = set()
    for node in graph.nodes:
        if not _is_default_domain(node):
            continue
        for pos in PRUNABLE_OPERANDS.get(node.op, ()):
            t = node.inputs[pos] if pos < len(node.inputs) else None
            while isinstance(t, gs.Variable) and len(t.inputs) == 1:
                producer = t.inputs[0]
                if producer.op not in WEIGHT_VIEW_OPS or not _is_default_domain(producer):
                    break
                keep.add(producer.name)
                t = producer.inputs[0]
    return keep


def prunable_operand(node: gs.Node, stored: Container[str]) -> tuple[int, gs.Constant] | None:
    """Position and source of the node's prunable weight, or None if it has none.

    Only weights stored in the model (`stored`: initializers and Constant-node outputs) can
    be masked; the other operand must be data (not a weight itself).
    """
    if not _is_default_domain(node):
        return None
    for pos in PRUNABLE_OPERANDS.get(node.op, ()):
        src = weight_source(node.inputs[pos], stored) if pos < len(node.inputs) else None
        if src is None:
            continue
        others = [t for i, t in enumerate(node.inputs[:2]) if i != pos]
        if all(isinstance(t, gs.Variable) and weight_source(t, stored) is None for t in others):
            return pos, src
    return None


def computed_operand(node: gs.Node, stored: Container[str]) -> gs.Constant | None:
    """The node's weight operand where the graph computed it from stored tensors (folding
    made it: weight standardization, weight normalization), beside a data operand; None
    where the node has none. Such a weight is not prunable: the layer stays dense."""
    if not _is_default_domain(node):
        return None
    for pos in PRUNABLE_OPERANDS.get(node.op, ()):
        w = node.inputs[pos] if pos < len(node.inputs) else None
        others = [t for i, t in enumerate(node.inputs[:2]) if i != pos]
        if (
            isinstance(w, gs.Constant)
            and is_float_constant(w)
            and w.name not in stored
            and all(isinstance(t, gs.Variable) for t in others)
        ):
            return w
    return None


QUANTIZED_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})


def quantized_weight_node(graph: gs.Graph) -> gs.Node | None:
    """A node that uses a quantized weight: a QLinear/Integer op, or a weight layer fed by
    DequantizeLinear of a constant (QDQ). onnxflow refuses these (docs/quantization.md)."""
    for node in graph.nodes:
        if node.op in QUANTIZED_OPS:
            return node
        for pos in PRUNABLE_OPERANDS.get(node.op, ()) if _is_default_domain(node) else ():
            t = node.inputs[pos] if pos < len(node.inputs) else None
            while isinstance(t, gs.Variable) and len(t.inputs) == 1:
                producer = t.inputs[0]
                if producer.op == "DequantizeLinear" and isinstance(
                    producer.inputs[0], gs.Constant
                ):
                    return node
                if producer.op not in WEIGHT_VIEW_OPS:
                    break
                t = producer.inputs[0]
    return None


def _operand_shape(t: gs.Tensor, stored: gs.Constant) -> tuple[int, ...]:
    """The weight operand's shape as the node sees it: a stored weight may reach the node
    through a Transpose or Reshape (TorchScript without constant folding stores a Linear's
    weight as is and transposes it in the graph), and only the seen shape says which axis
    holds the output features. The stored shape where the seen one is unknown."""
    shape = t.shape
    if (
        shape is not None
        and all(isinstance(d, int) and d > 0 for d in shape)
        and int(np.prod(shape)) == int(np.prod(stored.shape))
    ):
        return tuple(int(d) for d in shape)
    return tuple(stored.shape)


def _uses(node: gs.Node, pos: int, stored: gs.Constant) -> int:
    """How many times each weight is multiplied in one pass of `node` (static shapes)."""
    shape_w = _operand_shape(node.inputs[pos], stored)
    x, y = node.inputs[1 - pos if pos < 2 else 0], node.outputs[0]
    shape_x = [int(d) for d in x.shape] if x.shape is not None else []
    shape_y = [int(d) for d in y.shape] if y.shape is not None else []
    if not shape_y or not all(d > 0 for d in shape_y):
        return 0
    size_y = int(np.prod(shape_y))
    if node.op == "ConvTranspose":  # each weight meets every input position
        return int(np.prod(shape_x)) // max(1, shape_x[1]) if shape_x else 0
    if node.op == "Conv":
        return size_y // max(1, shape_y[1])
    out_features = (
        shape_w[0]
        if (node.op == "Gemm" and node.attrs.get("transB", 0)) or (node.op == "MatMul" and pos == 0)
        else shape_w[-1]
    )
    if node.op == "Gemm" and pos == 0:
        out_features = shape_w[1] if node.attrs.get("transA", 0) else shape_w[0]
    return size_y // max(1, int(out_features))


def _in_axis(node: gs.Node, pos: int, rank: int) -> int:
    """The input-channel (contracted) axis of the weight operand as the node sees it."""
    if node.op == "Conv":
        return 1
    if node.op == "ConvTranspose":
        return 0
    if node.op == "Gemm":
        trans = node.attrs.get("transB" if pos == 1 else "transA", 0)
        return (1 if trans else 0) if pos == 1 else (0 if trans else 1)
    return rank - 2 if pos == 1 else rank - 1  # MatMul: x @ W reads W's rows, W @ x its columns


def _stored_in_axis(node: gs.Node, pos: int, rank: int) -> int | None:
    """`_in_axis` mapped back through Transpose/Identity/Cast to the stored tensor (whose
    rank those views keep)."""
    t = node.inputs[pos]
    if rank < 2:
        return None
    axis = _in_axis(node, pos, rank)
    while isinstance(t, gs.Variable) and len(t.inputs) == 1:
        view = t.inputs[0]
        if view.op == "Transpose":
            perm = view.attrs.get("perm") or list(range(rank))[::-1]
            axis = int(perm[axis])
        elif view.op not in ("Identity", "Cast"):
            return None
        t = view.inputs[0]
    return axis


def _from_inputs(graph: gs.Graph) -> set[str]:
    """Names of the tensors computed from the graph inputs' values (not only their shapes)."""
    names = {t.name for t in graph.inputs}
    for node in graph.nodes:
        if node.op not in ("Shape", "Size") and any(
            t is not None and t.name in names for t in node.inputs
        ):
            names.update(t.name for t in node.outputs)
    return names


def lookup_table(
    node: gs.Node, stored: Container[str], tables: Container[str], runtime: Container[str]
) -> gs.Constant | None:
    """The prunable table of an embedding lookup `Gather(W, ids)`: W is already the weight
    of a weight layer (`tables`: a tied embedding, GPT-2's wte shared with the output
    projection) and the ids are computed from the inputs (`runtime`). The lookup is
    one-hot(ids) @ W, the same tensor's second use as a weight layer."""
    if node.op != "Gather" or not _is_default_domain(node) or len(node.inputs) != 2:
        return None
    src = weight_source(node.inputs[0], stored)
    if src is None or src.name not in tables or node.inputs[1].name not in runtime:
        return None
    return src


def tie_lookup_copies(
    graph: gs.Graph, stored: Container[str]
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Re-tie embedding tables that an exporter untied: GPT-2's output projection shares the
    token table, but constant folding stores its transpose as a second tensor. A weight-layer
    operand equal to a lookup table (`Gather(E, ids)` by run-time ids) or to its transpose
    is rewritten, in this analysis graph, as Transpose(E): one layer, one mask for the
    shared tensor. Returns the copies (see `WeightDag.copies`)."""
    runtime = _from_inputs(graph)
    tables: dict[str, gs.Constant] = {}
    for node in graph.nodes:
        if node.op == "Gather" and _is_default_domain(node) and len(node.inputs) == 2:
            src = weight_source(node.inputs[0], stored)
            if src is not None and node.inputs[1].name in runtime and len(src.shape) == 2:
                tables[src.name] = src
    copies: dict[str, tuple[str, tuple[int, ...]]] = {}
    if not tables:
        return copies
    views: dict[str, gs.Variable] = {}
    arrays: dict[str, np.ndarray] = {}  # tables read once, when a candidate matches a shape
    for node in list(graph.nodes):
        for pos in PRUNABLE_OPERANDS.get(node.op, ()) if _is_default_domain(node) else ():
            t = node.inputs[pos] if pos < len(node.inputs) else None
            if not isinstance(t, gs.Constant) or not is_float_constant(t):
                continue
            if t.name in tables or t.name not in stored:
                continue
            for table in tables.values() if t.name not in views else ():
                perm = _copy_of(table, t, arrays, constant_array)
                if perm is not None:
                    view = gs.Variable(f"{t.name}/tied", dtype=t.dtype, shape=list(t.shape))
                    attrs = {"perm": list(perm)}
                    graph.nodes.insert(
                        0, gs.Node("Transpose", f"{t.name}/tied", attrs, [table], [view])
                    )
                    views[t.name], copies[t.name] = view, (table.name, perm)
                    break
            if t.name in views:
                node.inputs[pos] = views[t.name]
    return copies


def _copy_of(
    table: gs.Constant,
    t: gs.Constant,
    arrays: dict[str, np.ndarray],
    read: Callable[[gs.Constant], np.ndarray],
) -> tuple[int, ...] | None:
    """The permutation that makes `t` from the 2-D `table`, or None if `t` is no copy."""
    shape = tuple(int(d) for d in t.shape)
    for perm in ((1, 0), (0, 1)):
        if shape != tuple(int(table.shape[p]) for p in perm) or t.dtype != table.dtype:
            continue
        if table.name not in arrays:
            arrays[table.name] = read(table)
        if np.array_equal(read(t), arrays[table.name].transpose(perm)):
            return perm
    return None


def build_weight_dag(graph: gs.Graph, stored: Container[str]) -> WeightDag:
    """Find the prunable weights of a toposorted graph and the layer-to-layer edges."""
    layers: dict[str, WeightLayer] = {}
    upstream: dict[str, set[str]] = {}  # tensor name -> nearest weight layers before it
    tables = {f[1].name for n in graph.nodes if (f := prunable_operand(n, stored))}
    runtime = _from_inputs(graph) if tables else set()
    lookups_only: set[str] = set()  # layers seen only as lookups so far
    for node in graph.nodes:
        feeding = set().union(*(upstream.get(t.name, set()) for t in node.inputs if t is not None))
        found = prunable_operand(node, stored)
        table = lookup_table(node, stored, tables, runtime)
        if table is not None and found is None:
            layer = layers.get(table.name)
            if layer is None:
                layer = layers[table.name] = WeightLayer(
                    table.name, "Gather", [], tuple(table.shape)
                )
                lookups_only.add(table.name)
            layer.nodes.append(node.name)  # a lookup: no multiply-accumulates, no in_axis
            for t in node.outputs:
                upstream[t.name] = {table.name}
            continue
        if found is None:
            for t in node.outputs:
                upstream[t.name] = feeding
            continue
        pos, w = found
        layer = layers.get(w.name)
        axis = _stored_in_axis(node, pos, len(w.shape))
        if layer is None:
            layer = layers[w.name] = WeightLayer(w.name, node.op, [], tuple(w.shape), in_axis=axis)
        elif w.name in lookups_only:
            lookups_only.discard(w.name)
            layer.op, layer.in_axis = node.op, axis
        elif layer.in_axis != axis:
            layer.in_axis = None
        layer.nodes.append(node.name)
        layer.uses += _uses(node, pos, w)
        layer.feeds_from = sorted(set(layer.feeds_from) | feeding - {w.name})
        for t in node.outputs:
            upstream[t.name] = {w.name}
    return WeightDag(list(layers.values()))
