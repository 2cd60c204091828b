"""BuildDagPass: find the prunable weights and how the layers connect."""

from __future__ import annotations

from onnxflow.dag import build_weight_dag
from onnxflow.errors import OnnxflowError
from onnxflow.pipeline import Pass, PruneState


class BuildDagPass(Pass):
    """Fills `state.dag`; a model with nothing to prune is an error."""

    requires = ("model", "graph")
    provides = ("dag",)

    def run(self, state: PruneState) -> None:
        assert state.model is not None and state.graph is not None
        stored = {t.name for t in state.model.graph.initializer}
        dag = build_weight_dag(state.graph, stored)
        if not dag.layers:
            raise OnnxflowError(
                f"{state.source or 'model'} has no prunable weights "
                "(constant weights of Conv, ConvTranspose, Gemm or MatMul)"
            )
        state.dag = dag
