"""Graph passes (graph-to-graph transforms of the analysis graph, `passes.base.GraphPass`)
and the stage parts they sit beside: loading, the weight DAG, the pruning loop, masking."""

from onnxflow.passes.base import GraphPass, PassResult
from onnxflow.passes.inline_if import InlineIfPass
from onnxflow.passes.linearize import LinearizePass
from onnxflow.passes.normalize import NormalizePass
from onnxflow.passes.selection import CutSelectionPass

__all__ = [
    "CutSelectionPass",
    "GraphPass",
    "InlineIfPass",
    "LinearizePass",
    "NormalizePass",
    "PassResult",
]
