"""Leave data-dependent selection (detection post-processing) out of the synaptic flow.

A detection network ends in post-processing that keeps a data-dependent subset of its
predictions: `NonZero` of `scores > threshold`, `TopK` of the scores, `NonMaxSuppression`
of the boxes, and everything computed from what they select (gathered boxes, RoIAlign on
the proposals, the final labels). Which predictions survive depends on data, and SynFlow
has none: the all-ones input selects arbitrary anchors, and an index computed from a flow
has no flow rule. The data-free choice is the network's dense prediction: R is taken at the
float tensors that enter the selection (the heads' scores and box regressions for every
anchor), the selection and what follows are dropped from the analysis graph, and weight
layers after it (Faster R-CNN's box head, which sees RoIAlign of selected proposals) are
not prunable: they stay dense, and a note says so. The pruned model keeps every node.

A selection of ids that are not activations (CLIP's argmax over token ids) is not cut: it
does not depend on a flow.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxflow.dag import PRUNABLE_OPERANDS, is_float_dtype, weight_source

SELECTION_OPS = frozenset({"NonZero", "TopK", "NonMaxSuppression", "ArgMax", "ArgMin", "Unique"})
"""Ops whose result (indices, or a count) depends on the values of their input."""


def _is_float(t: gs.Tensor) -> bool:
    return t.dtype is not None and is_float_dtype(t.dtype)


def activations(graph: gs.Graph) -> set[str]:
    """Names of the tensors computed from a float activation: the float graph inputs, any
    float tensor computed from a graph input (an embedding lookup of ids), and everything
    computed from those."""
    inputs = {t.name for t in graph.inputs}
    derived = set(inputs)  # computed from any graph input
    active = {t.name for t in graph.inputs if _is_float(t)}
    for node in graph.nodes:
        names = [t.name for t in node.inputs if t is not None and t.name]
        if any(n in active for n in names):
            active.update(t.name for t in node.outputs)
        elif any(n in derived for n in names):
            derived.update(t.name for t in node.outputs)
            active.update(t.name for t in node.outputs if _is_float(t))
    return active


def cut_selection(graph: gs.Graph, stored: set[str]) -> str | None:
    """Drop the selection nodes fed by activations, and everything downstream of them, from
    a toposorted analysis graph; their float activation inputs become outputs. Returns the
    one-line note, or None if the graph has no such selection."""
    active = activations(graph)
    cut: list[gs.Node] = []
    inside: set[str] = set()  # tensors produced in the cut part
    for node in graph.nodes:
        names = [t.name for t in node.inputs if t is not None and t.name]
        selects = node.op in SELECTION_OPS and bool(names) and names[0] in active
        if selects or any(n in inside for n in names):
            cut.append(node)
            inside.update(t.name for t in node.outputs)
    if not cut:
        return None
    cut_ids = {id(n) for n in cut}
    frontier: dict[str, gs.Tensor] = {}
    for node in cut:
        for t in node.inputs:
            if t is not None and t.name in active and t.name not in inside and _is_float(t):
                frontier.setdefault(t.name, t)
    dense = [n.name for n in cut if _has_stored_weight(n, stored)]
    kept = [t for t in graph.outputs if t.name not in inside]
    graph.outputs = kept + [t for name, t in frontier.items() if all(o.name != name for o in kept)]
    for node in cut:  # detach, so cleanup removes them whatever else they read
        node.inputs.clear()
        node.outputs.clear()
    graph.nodes = [n for n in graph.nodes if id(n) not in cut_ids]
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    first = next(n for n in cut if n.op in SELECTION_OPS)
    note = (
        f"the data-dependent selection starting at node {first.name!r} ({first.op}) and the "
        f"{len(cut) - 1} nodes after it are left out of the synaptic flow; R is taken at the "
        f"{len(frontier)} tensors entering it"
    )
    if dense:
        shown = ", ".join(repr(n) for n in dense[:3]) + (
            f" and {len(dense) - 3} more" if len(dense) > 3 else ""
        )
        note += f"; {len(dense)} weight layer{'s' if len(dense) > 1 else ''} there stay dense: {shown}"
    return note


def _has_stored_weight(node: gs.Node, stored: set[str]) -> bool:
    return any(
        pos < len(node.inputs) and weight_source(node.inputs[pos], stored) is not None
        for pos in PRUNABLE_OPERANDS.get(node.op, ())
    )
