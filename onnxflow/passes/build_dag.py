"""BuildDagPass: find the prunable weights and how the layers connect."""

from __future__ import annotations

import fnmatch

from onnxflow.dag import WeightLayer, build_weight_dag, quantized_weight_node, tie_lookup_copies
from onnxflow.errors import OnnxflowError, Opt
from onnxflow.flow.zero_init import find_zero_init
from onnxflow.pipeline import Pass, PruneState
from onnxflow.tensors import stored_tensor_names


def _matches(layer: WeightLayer, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(n, pattern) for n in (layer.name, *layer.nodes))


class BuildDagPass(Pass):
    """Fills `state.dag`; a model with nothing to prune is an error."""

    requires = ("model", "graph")
    provides = ("dag",)

    def run(self, state: PruneState) -> None:
        assert state.model is not None and state.graph is not None
        quantized = quantized_weight_node(state.graph)
        if quantized is not None:
            raise OnnxflowError(
                f"{state.source or 'model'} has quantized weights (node {quantized.name!r}, "
                f"{quantized.op}); onnxflow prunes float models: prune before quantizing"
            )
        stored = stored_tensor_names(state.model)
        copies = tie_lookup_copies(state.graph, stored)
        dag = build_weight_dag(state.graph, stored)
        dag.copies = {c: v for c, v in copies.items() if any(v[0] == x.name for x in dag.layers)}
        patterns = state.options.exclude
        if patterns:
            state.excluded = [x for x in dag.layers if any(_matches(x, p) for p in patterns)]
            state.exclude_unmatched = [
                p for p in patterns if not any(_matches(x, p) for x in dag.layers)
            ]
            dag.layers = [x for x in dag.layers if x not in state.excluded]
        if state.options.zero_init == "ones":
            zero = state.zero_init = find_zero_init(state.graph, stored)
            # An all-zero weight has nothing to prune: it leaves N, and flow crosses it as ones.
            dag.layers = [layer for layer in dag.layers if layer.name not in zero.weights]
            dag.read_as_ones = zero.names
        if not dag.layers:
            raise OnnxflowError(
                "{source} has no prunable weights "
                "(constant weights of Conv, ConvTranspose, Gemm or MatMul"
                + (", not excluded by {opt}" if patterns else "")
                + (", not all zero" if state.zero_init.weights else "")
                + ")",
                source=state.source or "model",
                opt=Opt("exclude", tuple(patterns)),
            )
        state.dag = dag
