"""LinearizePass: rewrite nonlinear compositions of the analysis graph to their positive
linearization, so exporter spellings of one activation or normalization all score alike.

- gated activations, `x * f(x)` with f pointwise (swish/SiLU `x*sigmoid(x)`, GELU
  `0.5x*(1+erf(x/sqrt2))`, hard-swish, Mish): become `x`, as a plain activation would;
- centring, `x - mean(x)`: becomes `x` (the mean is a data-dependent shift, i.e. a bias);
- division by statistics of the numerator, `a / sqrt(mean(a^2) + eps)` (decomposed
  LayerNorm/RMSNorm, F.normalize's `a / Expand(Clip(ReduceL2(a)))`), and the same written as
  a product, `a * rsqrt(mean(a^2) + eps)` (LLaMA, T5): become `a`. The denominator may reach
  the division through view ops (Expand, Unsqueeze, Reshape, Transpose...), eps clamps (Max,
  Min, Clip) and casts;
- a saturation (Clip, Min, Max) of an affine function of `x` (hard-sigmoid written as
  `Max(Min(0.2x + 0.5, 1), 0)`): becomes `x`, as HardSigmoid would;
- an ai.onnx.ml ZipMap at an output: the probabilities it wraps become the output;
- RNN, GRU and LSTM cells: unrolled into their linearized recurrence (passes/recurrent.py),
  so that W and R are MatMul weights.

Only the analysis graph changes; the pruned model is the original.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxflow.flow.rules.elementwise import POINTWISE
from onnxflow.passes.base import GraphPass, PassResult
from onnxflow.passes.recurrent import unroll_recurrent

_ACTIVATIONS = frozenset({*POINTWISE, "Cast"})
_AFFINE = frozenset({"Add", "Sub", "Mul", "Div"})
_STATISTICS = frozenset(
    {"ReduceMean", "ReduceSum", "ReduceL2", "ReduceL1", "ReduceSumSquare", "ReduceMax"}
)
# Ops that move or clamp a statistic on its way to the division; only input 0 is followed
# (the others are shapes, axes or eps constants).
_VIEWS = frozenset(
    {"Expand", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose", "Tile", "Identity"}
)
_CLAMPS = frozenset({"Max", "Min", "Clip"})


def _variable_inputs(node: gs.Node) -> list[gs.Variable]:
    return [t for t in node.inputs if isinstance(t, gs.Variable) and t.name]


def _producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if isinstance(t, gs.Variable) and len(t.inputs) == 1 else None


def root(t: gs.Tensor) -> gs.Tensor:
    """The tensor `t` is a pointwise function of (through activations and constant affine
    ops), following single-variable-input nodes."""
    while (node := _producer(t)) is not None:
        ins = _variable_inputs(node)
        if len(ins) != 1 or not (node.op in _ACTIVATIONS or node.op in _AFFINE):
            break
        t = ins[0]
    return t


def _derived_only_from(t: gs.Tensor, x: gs.Tensor, depth: int = 64) -> bool:
    """Whether `t` is computed from `x` alone (plus constants) by pointwise, affine and
    reduction ops: statistics of x."""
    if t is x:
        return True
    node = _producer(t)
    if node is None or depth == 0:
        return False
    if node.op in _VIEWS | _STATISTICS:
        # data, not shapes or axes (which may be computed from x by Shape)
        return _derived_only_from(node.inputs[0], x, depth - 1)
    if node.op not in _ACTIVATIONS | _AFFINE | _CLAMPS:
        return False
    ins = _variable_inputs(node)
    return bool(ins) and all(_derived_only_from(i, x, depth - 1) for i in ins)


_SATURATIONS = frozenset({"Clip", "Min", "Max"})


def _normalizer(t: gs.Tensor, depth: int = 64) -> bool:
    """Whether `t` is one over a statistic (through activations, views and clamps): the
    factor of a normalization written as a product, `rsqrt(mean(a^2) + eps)`."""
    node = _producer(t)
    if node is None or depth == 0:
        return False
    if node.op in ("Reciprocal", "Div") and any(
        _has_statistic(i) for i in _variable_inputs(node)[-1:]
    ):
        return node.op == "Reciprocal" or not isinstance(node.inputs[0], gs.Variable)
    if node.op == "Pow" and isinstance(node.inputs[1], gs.Constant):
        exponent = node.inputs[1].values
        return bool((exponent < 0).all()) and _has_statistic(node.inputs[0])
    if node.op in _VIEWS | _CLAMPS | _ACTIVATIONS or node.op in ("Add", "Mul"):
        ins = _variable_inputs(node)
        return len(ins) == 1 and _normalizer(ins[0], depth - 1)
    return False


def _has_statistic(t: gs.Tensor, depth: int = 64) -> bool:
    """Whether a reduction lies on the way to `t` (through single-variable-input ops)."""
    node = _producer(t)
    if node is None or depth == 0:
        return False
    if node.op in _STATISTICS:
        return True
    ins = _variable_inputs(node)
    return bool(ins) and _has_statistic(node.inputs[0] if node.op in _VIEWS else ins[0], depth - 1)


def _rewrite(graph: gs.Graph) -> int:
    changed = 0
    for node in graph.nodes:
        ins = _variable_inputs(node)
        if node.op in _SATURATIONS and len(ins) == 1:
            # A saturating activation of an affine pre-activation (hard-sigmoid written as
            # Max(Min(0.2x + 0.5, 1), 0)) is one activation: it passes x.
            inner = _producer(ins[0])
            if (
                inner is not None
                and inner.op in _AFFINE | _SATURATIONS
                and root(ins[0]) is not ins[0]
            ):
                node.op, node.inputs, node.attrs = "Identity", [root(ins[0])], {}
                changed += 1
            continue
        if len(ins) != 2 or node.op not in ("Mul", "Sub", "Div"):
            continue
        a, b = ins
        keep: gs.Tensor | None = None
        centring = node.op == "Sub" and (p := _producer(b)) is not None and p.op in _STATISTICS
        if node.op == "Mul" and root(a) is root(b):
            keep = root(a)
        elif (centring or node.op == "Div") and _derived_only_from(b, root(a)):
            keep = a
        elif node.op == "Mul" and _normalizer(b) and _derived_only_from(b, root(a)):
            keep = a  # a * rsqrt(mean(a^2) + eps)
        elif node.op == "Mul" and _normalizer(a) and _derived_only_from(a, root(b)):
            keep = b
        if keep is not None:
            node.op, node.inputs, node.attrs = "Identity", [keep], {}
            changed += 1
    return changed


def _drop_zipmap(graph: gs.Graph) -> int:
    """ai.onnx.ml ZipMap turns probabilities into a sequence of maps: the probabilities are
    the output that carries flow. Returns how many were dropped."""
    dropped = 0
    for node in graph.nodes:
        if node.op == "ZipMap" and (node.domain or "") == "ai.onnx.ml":
            graph.outputs = [node.inputs[0] if o is node.outputs[0] else o for o in graph.outputs]
            dropped += 1
    return dropped


class LinearizePass(GraphPass):
    """Drop ZipMap, unroll recurrent cells, then rewrite to the positive linearization
    until nothing changes; the graph is left cleaned and toposorted."""

    name = "linearize"
    in_place = True

    def call(self, graph: gs.Graph) -> PassResult:
        changed = _drop_zipmap(graph) + unroll_recurrent(graph)
        while step := _rewrite(graph):
            changed += step
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return PassResult(graph, modified=changed > 0)
