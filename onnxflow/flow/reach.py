"""Where flow goes: the one walk that says which tensors carry synaptic flow and which ops on
the flow path have no rule.

Both the flow-model builder (which refuses a model with such an op) and `inspect` (which
lists them) call `flow_reach`, so the ops inspect names are exactly the ops prune refuses.

Flow starts at the float graph inputs, at every prunable weight and at an embedding lookup
`Gather(E, ids)` (a float table indexed by values computed from the inputs: flow enters as
one-hot(ids) @ |E|, flow/sources.py). A node with a flowing input is on the flow path; its
rule says which outputs carry flow on (`FlowRule.flow_outputs`: by default every float
output). An op on the path without a rule is listed, and its float outputs are taken to carry
flow so that the ops after it are checked too. A node no flow reaches runs as it is: if it
computes from the integer inputs (ids, masks) its results are "derived" data, which is what
makes a later `Gather(E, ids)` a lookup; Shape and Size of such data are not (shapes are
static).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxflow.dag import is_float_dtype
from onnxflow.flow.registry import RuleRegistry, default_rules

MIN_OPSET = 17
"""The flow model is written in this opset, or the model's if newer."""


def flow_opset(graph: gs.Graph) -> int:
    """The opset rules are looked up at (and the flow model written in)."""
    return max(MIN_OPSET, int(graph.opset))


@dataclass(frozen=True)
class FlowReach:
    flowing: frozenset[str]
    """Names of the tensors that carry flow."""
    path: tuple[gs.Node, ...]
    """Nodes with a flowing input, in graph (topological) order."""
    missing: tuple[gs.Node, ...]
    """Nodes of `path` whose op has no rule at the flow opset, in graph order."""


def is_lookup(node: gs.Node, derived: set[str]) -> bool:
    """`Gather(E, ids)`: a float table not itself computed from the inputs, indexed by
    values computed from them (token ids). Only asked of nodes no flow reaches."""
    if node.op != "Gather" or len(node.inputs) != 2:
        return False
    table, ids = node.inputs
    return (
        table is not None
        and table.name != ""
        and is_float_dtype(table.dtype)
        and table.name not in derived
        and ids is not None
        and ids.name in derived
    )


def flow_reach(
    graph: gs.Graph, weights: Iterable[str], rules: RuleRegistry | None = None
) -> FlowReach:
    """Which tensors of a normalized (toposorted) graph carry flow from its float inputs and
    the prunable `weights` (names), and which ops on the flow path have no rule in `rules`
    (default: the default registry)."""
    rules = rules if rules is not None else default_rules()
    opset = flow_opset(graph)
    flowing = {t.name for t in graph.inputs if is_float_dtype(t.dtype)}
    derived = {t.name for t in graph.inputs if not is_float_dtype(t.dtype)}
    flowing |= set(weights)
    path: list[gs.Node] = []
    missing: list[gs.Node] = []
    for node in graph.nodes:
        names = [t.name for t in node.inputs if t is not None and t.name]
        if any(name in flowing for name in names):
            path.append(node)
            rule = rules.get(node.op, node.domain or "", opset)
            if rule is None:
                missing.append(node)
            n = None if rule is None else rule.flow_outputs
            outs = node.outputs if n is None else node.outputs[:n]
            flowing.update(t.name for t in outs if t.dtype is None or is_float_dtype(t.dtype))
        elif is_lookup(node, derived):
            flowing.add(node.outputs[0].name)
        elif node.op not in ("Shape", "Size") and any(name in derived for name in names):
            derived.update(t.name for t in node.outputs)
    return FlowReach(frozenset(flowing), tuple(path), tuple(missing))
