"""Inline the `If` nodes whose condition constant folding has decided.

Detection exports (RetinaNet, FCOS, Faster R-CNN from the TorchScript exporter) end in an
`If` on "no box left", and once the analysis graph has static shapes the condition folds to
a constant. graph-surgeon can flatten such an `If`, but it rebinds only branch outputs that
a node inside the branch produces: a branch that returns a folded constant, or a tensor of
the outer graph, leaves the `If`'s output with no producer while its consumers still read it.
So onnxflow folds with graph-surgeon's flattening off and inlines here: the taken branch's
nodes go where the `If` was, and each `If` output becomes an `Identity` of the branch output
(which any branch output can feed, and the flow passes unchanged).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxflow.errors import OnnxflowError
from onnxflow.passes.base import GraphPass, PassResult


def constant_condition(node: gs.Node) -> bool | None:
    """The value of an `If` node's condition, or None while it is computed at run time."""
    cond = node.inputs[0] if node.inputs else None
    if not isinstance(cond, gs.Constant):
        return None
    values = np.asarray(cond.values)
    if values.size != 1:
        return None  # the spec wants one element; onnxruntime would refuse this model
    return bool(values.reshape(-1)[0])


def inline_constant_ifs(graph: gs.Graph) -> int:
    """Replace each `If` of `graph` (not of its subgraphs) whose condition is a constant by
    the branch it takes. Returns how many were inlined; the graph is left toposorted."""
    taken = 0
    names = {n.name for n in graph.nodes}
    tensors = set(graph.tensors())
    index = 0
    while index < len(graph.nodes):
        node = graph.nodes[index]
        cond = constant_condition(node) if node.op == "If" else None
        if cond is None:
            index += 1
            continue
        branch: gs.Graph = node.attrs["then_branch" if cond else "else_branch"]
        if len(branch.outputs) != len(node.outputs):
            raise OnnxflowError(
                f"node {node.name!r} (If): its {'then' if cond else 'else'} branch has "
                f"{len(branch.outputs)} outputs for the node's {len(node.outputs)}"
            )
        inlined = list(branch.nodes)
        for inner in inlined:  # names must stay unique: they key the weight layers
            inner.name = _unique(inner.name or inner.op, f"{node.name}/", names)
            for t in inner.outputs:
                if t.name in tensors:
                    t.name = _unique(t.name, f"{node.name}/", tensors)
                tensors.add(t.name)
        outputs = list(node.outputs)
        node.inputs.clear()
        node.outputs.clear()  # the If no longer produces them
        for out, inner_out in zip(outputs, branch.outputs, strict=True):
            name = _unique("Identity", f"{node.name}/", names)
            inlined.append(gs.Node("Identity", name, inputs=[inner_out], outputs=[out]))
        graph.nodes[index : index + 1] = inlined  # an If inside the branch is seen next
        taken += 1
    if taken:
        graph.toposort()
    return taken


class InlineIfPass(GraphPass):
    """`inline_constant_ifs` as a pass (normalization runs it after each constant folding)."""

    name = "inline-if"
    in_place = True

    def call(self, graph: gs.Graph) -> PassResult:
        return PassResult(graph, modified=inline_constant_ifs(graph) > 0)


def refuse_control_flow(graph: gs.Graph, active: set[str]) -> None:
    """Refuse, naming the node, an `If`, `Loop` or `Scan` left after folding and inlining:
    its condition or trip count is known only at run time, and no flow rule runs a subgraph.
    The message says which tensor carrying the flow (`active`) it reads, if any: the flow
    enters subgraphs through names of the outer graph, not only through the node's inputs."""
    for node in graph.nodes:
        subgraphs = list(node.subgraphs())
        if not subgraphs:
            continue
        read = sorted(n for sub in subgraphs for n in sub._foreign_tensors() if n in active)
        read += [t.name for t in node.inputs if t is not None and t.name in active]
        on = f" on {read[0]!r}, which carries the flow," if read else ""
        raise OnnxflowError(
            f"node {node.name!r} ({node.op}) runs a subgraph{on} with a condition or trip "
            "count known only at run time; onnxflow cannot score through it "
            "(see docs/flow_rules.md)"
        )


def _unique(name: str, prefix: str, taken: set[str]) -> str:
    """`name`, or `prefix + name` (then with a counter) if that is already used."""
    out = name if name not in taken else prefix + name
    i = 1
    while out in taken:
        out = f"{prefix}{name}_{i}"
        i += 1
    taken.add(out)
    return out
