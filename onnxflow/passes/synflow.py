"""SynFlowPass: iterative SynFlow pruning (Tanaka et al. 2020, algorithm 1), or one of the
paper's baselines (magnitude, random) through the same schedule and selection.

Scores are recomputed on the masked network at every step, and the kept count follows the
schedule down to exactly round(density * N). The first step's scores are those of the dense
network and are kept for `--scores`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from onnxflow.errors import OnnxflowError
from onnxflow.flow.engine import FlowEngine, FlowScores
from onnxflow.masks import reserve, schedule_counts, select_global, select_local
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
        baseline = _baseline(opts.method, opts.seed, engine.weights)
        for step, k in enumerate(counts):
            if step == 0 or k < kept:
                scores = engine.run() if step == 0 or baseline is None else None
                if step == 0:
                    assert scores is not None
                    if scores.log_flow == -np.inf:
                        raise OnnxflowError(
                            "the network carries no synaptic flow (R = 0): every input-output "
                            "path crosses a zero weight, so there is nothing to rank"
                        )
                    state.log_flow = scores.log_flow
                if baseline is not None:
                    scores = baseline(masks)
                assert scores is not None
                if step == 0:
                    state.log_scores = scores.log()
                kept_first = reserve(names, scores, masks, opts.min_kept) if opts.min_kept else {}
                rest = {n: masks[n] & ~kept_first[n] for n in kept_first} or masks
                k_rest = max(0, k - sum(int(np.count_nonzero(r)) for r in kept_first.values()))
                if opts.scope == "global":
                    masks = select_global(names, scores, rest, k_rest)
                else:
                    masks = select_local(names, scores, rest, k_rest, sizes)
                for n, first in kept_first.items():
                    masks[n] |= first
                engine.prune(masks)
                kept = sum(int(np.count_nonzero(m)) for m in masks.values()) if kept_first else k
            logger.debug("step %d/%d: kept %d", step + 1, len(counts), kept)
            if state.progress is not None:
                state.progress(step + 1, len(counts))
        state.masks = masks


def _baseline(
    method: str, seed: int, weights: dict[str, np.ndarray]
) -> Callable[[dict[str, np.ndarray]], FlowScores] | None:
    """The paper's baselines as fixed scores on the masked network: |W|, or seeded uniform
    noise. None for SynFlow, whose scores come from the flow engine."""
    if method == "synflow":
        return None
    if method == "magnitude":
        fixed = {n: w.copy() for n, w in weights.items()}
    else:
        rng = np.random.default_rng(seed)
        fixed = {
            n: rng.random(w.shape, dtype=np.float32) + np.float32(1e-6) for n, w in weights.items()
        }

    def scores(masks: dict[str, np.ndarray]) -> FlowScores:
        values = {n: v * masks[n] for n, v in fixed.items()}
        return FlowScores(values, dict.fromkeys(values, 0.0), float("nan"))

    return scores
