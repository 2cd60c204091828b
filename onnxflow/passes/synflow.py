"""SynFlowPass: iterative SynFlow pruning (Tanaka et al. 2020, algorithm 1).

Scores are recomputed on the masked network at every step, and the kept count follows the
schedule down to exactly round(density * N). The first step's scores are those of the dense
network and are kept for `--scores`.
"""

from __future__ import annotations

import logging

import numpy as np

from onnxflow.errors import OnnxflowError
from onnxflow.flow.engine import FlowEngine
from onnxflow.masks import schedule_counts, select_global, select_local
from onnxflow.pipeline import Pass, PruneState
from onnxflow.runtime import resolve_provider

logger = logging.getLogger(__name__)


class SynFlowPass(Pass):
    requires = ("graph", "dag")
    provides = ("masks", "log_scores", "log_flow", "provider")

    def run(self, state: PruneState) -> None:
        assert state.graph is not None and state.dag is not None
        opts, dag = state.options, state.dag
        total = dag.size
        target = round(opts.density * total)
        if target == 0 and opts.density > 0:
            raise OnnxflowError(
                f"sparsity {opts.sparsity} keeps round({opts.density:g} * {total}) = 0 "
                "of the prunable weights; choose a lower sparsity"
            )
        state.provider = resolve_provider(opts.provider)
        engine = FlowEngine(state.graph, dag, state.provider)
        names = [layer.name for layer in dag.layers]
        sizes = [layer.size for layer in dag.layers]
        masks = {layer.name: np.ones(layer.shape, dtype=bool) for layer in dag.layers}
        kept = total
        counts = schedule_counts(total, opts.density, opts.iterations, opts.schedule)
        for step, k in enumerate(counts):
            if step == 0 or k < kept:
                scores = engine.run()
                if step == 0:
                    if scores.log_flow == -np.inf:
                        raise OnnxflowError(
                            "the network carries no synaptic flow (R = 0): every input-output "
                            "path crosses a zero weight, so there is nothing to rank"
                        )
                    state.log_scores, state.log_flow = scores.log(), scores.log_flow
                if opts.scope == "global":
                    masks = select_global(names, scores, masks, k)
                else:
                    masks = select_local(names, scores, masks, k, sizes)
                engine.prune(masks)
                kept = k
            logger.debug("step %d/%d: kept %d", step + 1, len(counts), kept)
            if state.progress is not None:
                state.progress(step + 1, len(counts))
        state.masks = masks
