"""Graph passes: graph-to-graph transforms of the analysis graph.

"Pass" means only this here: one transform of a `gs.Graph` (normalize, linearize, inline a
constant `If`, cut a data-dependent selection). The stages that turn a model into results
(`analyze`, `select`, `materialize`) are functions with typed results (onnxflow/stages.py).

A pass declares whether it works in place (`in_place = True`: it edits the graph it is
given and returns it) or returns a new graph and leaves its input as it was; calling it
checks the declaration. An exception raised inside a pass carries a note naming the pass
(shown in tracebacks; the one-line message a user sees is the pass's own, unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import onnx_graphsurgeon as gs


@dataclass(frozen=True)
class PassResult:
    """What a pass did: the graph after it, whether it changed anything, and the notes it
    has for the user (parts of the model it left dense or out of the flow)."""

    graph: gs.Graph
    modified: bool
    notes: tuple[str, ...] = ()


class GraphPass:
    """One graph-to-graph transform. Subclasses set `name` and `in_place` and implement
    `call`."""

    name: ClassVar[str]
    in_place: ClassVar[bool]

    def call(self, graph: gs.Graph) -> PassResult:
        raise NotImplementedError

    def __call__(self, graph: gs.Graph) -> PassResult:
        try:
            result = self.call(graph)
        except Exception as e:
            e.add_note(f"(in the {self.name} pass)")
            raise
        if self.in_place != (result.graph is graph):
            declared = "in place" if self.in_place else "on a new graph"
            raise RuntimeError(f"the {self.name} pass declares it works {declared}, but did not")
        return result
