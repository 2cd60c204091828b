"""Leave what detection post-processing selects by the flow's values out of the flow.

A detection network ends in post-processing that keeps a data-dependent subset of its
predictions: `NonZero` of `scores > threshold`, the indices of `TopK` of the scores,
`NonMaxSuppression` of the boxes. Those indices are chosen by the values of the flow (on the
all-ones input SynFlow uses, arbitrary anchors), and the nodes that apply them to a flow
(`Gather`/`GatherND` of the box regressions by them, RoIAlign of the features on the chosen
proposals, a factor cast from them) have no flow rule that would mean anything. The
data-free choice is the network's dense prediction: those nodes and everything after them
are dropped from the analysis graph, and R is taken at the float flows they read (the heads'
scores and box regressions for every anchor). Weight layers after them (Faster R-CNN's box
head, which sees RoIAlign of selected proposals) are not prunable there: they stay dense,
and a note says so. The pruned model keeps every node.

Nothing is dropped where the selection only ends the flow (an ArgMax label beside the
probabilities) or passes it (TopK's values, as MaxPool's winners), where a fixed-size
selection feeds an op whose rule applies it (GatherElements by TopK's indices), nor where
the selection is not made on a flow (CLIP's argmax over token ids).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxflow.dag import PRUNABLE_OPERANDS, is_float_dtype, weight_source
from onnxflow.errors import some_names
from onnxflow.passes.base import GraphPass, PassResult

SELECTION_OPS = frozenset({"NonZero", "TopK", "NonMaxSuppression", "ArgMax", "ArgMin", "Unique"})
"""Ops whose result (indices, or a count) depends on the values of their input."""

NO_FLOW_RULE = frozenset({"NonMaxSuppression", "Unique"})
"""Selection ops that cannot stay on the flow path: they are dropped with what they read."""

VARIABLE_SIZE = frozenset({"NonZero", "NonMaxSuppression", "Unique"})
"""Selections whose result has a data-dependent size: the analysis graph's static shapes
(from one run on ones) do not hold for the flow model's values."""

TAKES_INDICES = frozenset({"GatherElements"})
"""Ops whose flow rule applies indices that the flow model computes on the flow (TopK's, as
MaxPool picks its winners; docs/flow_rules.md): they keep fixed-size selections."""


def reads(node: gs.Node) -> list[str]:
    """Names of the tensors a node reads: its inputs, and the outer-graph tensors that its
    subgraphs (If branches, Loop and Scan bodies) use by name."""
    names = [t.name for t in node.inputs if t is not None and t.name]
    for sub in node.subgraphs():
        names += [n for n in sub._foreign_tensors() if n not in names]
    return names


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
        names = reads(node)
        if any(n in active for n in names):
            active.update(t.name for t in node.outputs)
        elif any(n in derived for n in names):
            derived.update(t.name for t in node.outputs)
            active.update(t.name for t in node.outputs if _is_float(t))
    return active


def cut_selection(graph: gs.Graph, stored: set[str]) -> str | None:
    """Drop from a toposorted analysis graph the nodes that combine a flow with indices
    selected by the flow (and everything after them); the flows they read become outputs.
    Returns the one-line note, or None if nothing was dropped."""
    active = activations(graph)
    selected: dict[str, bool] = {}  # indices chosen by the flow's values -> variable size
    inside: set[str] = set()  # tensors produced by dropped nodes
    frontier: dict[str, gs.Tensor] = {}
    cut: list[gs.Node] = []
    first: gs.Node | None = None
    for node in graph.nodes:
        names = reads(node)
        selects = node.op in SELECTION_OPS and bool(names) and names[0] in active
        flows = [
            t
            for t in node.inputs
            if t is not None and t.name in active and _is_float(t)
            and t.name not in selected and t.name not in inside
        ]  # fmt: skip
        kinds = {selected[n] for n in names if n in selected}
        applies = bool(flows) and (
            True in kinds or (False in kinds and node.op not in TAKES_INDICES)
        )
        if any(n in inside for n in names) or applies or (selects and node.op in NO_FLOW_RULE):
            cut.append(node)
            inside.update(t.name for t in node.outputs)
            for t in flows:
                frontier.setdefault(t.name, t)
        elif selects:
            first = first or node
            # TopK's values are a flow (its rule passes them); its indices are a choice.
            chosen = node.outputs[1:] if node.op == "TopK" else node.outputs
            selected.update((t.name, node.op in VARIABLE_SIZE) for t in chosen)
        elif kinds and not flows:  # arithmetic on the indices (anchor = index // classes)
            selected.update((t.name, True in kinds) for t in node.outputs)
    if not cut:
        return None
    dense = [n.name for n in cut if _has_stored_weight(n, stored)]
    cut_ids = {id(n) for n in cut}
    kept = [t for t in graph.outputs if t.name not in inside]
    graph.outputs = kept + [t for name, t in frontier.items() if all(o.name != name for o in kept)]
    for node in cut:  # detach, so cleanup removes them whatever else they read
        node.inputs.clear()
        node.outputs.clear()
    graph.nodes = [n for n in graph.nodes if id(n) not in cut_ids]
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    where = first or cut[0]
    note = (
        f"{len(cut)} nodes that use what node {where.name!r} ({where.op}) selects by the "
        f"flow's values are left out of the synaptic flow; R is taken at the {len(frontier)} "
        "tensors they read"
    )
    if dense:
        note += (
            f"; {len(dense)} weight layer{'s' if len(dense) > 1 else ''} there stay dense: "
            f"{some_names(dense)}"
        )
    return note


class CutSelectionPass(GraphPass):
    """`cut_selection` as a pass: its note (if it dropped anything) comes with the result."""

    name = "cut-selection"
    in_place = True

    def __init__(self, stored: set[str]) -> None:
        self.stored = stored
        """Names of the tensors the model stores (weights after a cut stay dense)."""

    def call(self, graph: gs.Graph) -> PassResult:
        note = cut_selection(graph, self.stored)
        return PassResult(graph, modified=note is not None, notes=(note,) if note else ())


def _has_stored_weight(node: gs.Node, stored: set[str]) -> bool:
    return any(
        pos < len(node.inputs) and weight_source(node.inputs[pos], stored) is not None
        for pos in PRUNABLE_OPERANDS.get(node.op, ())
    )
