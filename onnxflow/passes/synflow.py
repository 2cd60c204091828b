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

from onnxflow.dag import WeightDag
from onnxflow.errors import OnnxflowError, Opt
from onnxflow.flow.engine import FlowEngine, FlowScores
from onnxflow.masks import (
    fits_pattern,
    reserve,
    restrict_to_pattern,
    schedule_counts,
    select_global,
    select_local,
)
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
        pattern = _Pattern(opts.pattern, dag) if opts.pattern else None
        if pattern is not None:
            state.pattern_skipped = pattern.skipped
            target = pattern.target(opts.sparsity, total)
        else:
            assert opts.density is not None
            target = round(opts.density * total)
            if target == 0 and opts.density > 0:
                raise OnnxflowError(
                    f"sparsity {opts.sparsity} keeps round({opts.density:g} * {total}) = 0 "
                    "of the prunable weights; choose a lower sparsity"
                )
        state.provider = resolve_provider(opts.provider)
        engine = FlowEngine(state.graph, dag, state.provider, state.rules)
        names = [layer.name for layer in dag.layers]
        sizes = [layer.size for layer in dag.layers]
        masks = {layer.name: np.ones(layer.shape, dtype=bool) for layer in dag.layers}
        kept, per_group = total, None
        counts = schedule_counts(total, target / total, opts.iterations, opts.schedule)
        counts[-1] = target
        baseline = _baseline(opts.method, opts.seed, engine)
        for step, k in enumerate(counts):
            limit = pattern.per_group(step, len(counts)) if pattern is not None else None
            if step == 0 or k < kept or limit != per_group:
                per_group = limit
                # Later global selections check a sample of the scores instead of all N.
                check = step == 0 or opts.scope != "global"
                scores = engine.run(check=check) if step == 0 or baseline is None else None
                if step == 0:
                    assert scores is not None
                    if scores.log_flow == -np.inf:
                        raise OnnxflowError(_no_flow_message(engine))
                    state.log_flow = scores.log_flow
                if baseline is not None:
                    scores = baseline(masks)
                assert scores is not None
                if step == 0:
                    state.log_scores = scores.log() if state.keep_scores else {}
                if pattern is not None:
                    assert limit is not None
                    masks = pattern.restrict(scores, masks, limit)
                    if opts.sparsity is None:  # the pattern alone: keep every candidate
                        k = sum(int(np.count_nonzero(m)) for m in masks.values())
                kept_first = reserve(names, scores, masks, opts.min_kept) if opts.min_kept else {}
                rest = {n: masks[n] & ~kept_first[n] for n in kept_first} or masks
                k_rest = max(0, k - sum(int(np.count_nonzero(r)) for r in kept_first.values()))
                if opts.scope == "global":
                    # The engine's scores are 0 exactly where it was pruned: at `masks`.
                    zeroed = rest is masks and pattern is None and baseline is None
                    masks = select_global(names, scores, rest, k_rest, zeroed=zeroed)
                else:
                    masks = select_local(names, scores, rest, k_rest, sizes)
                for n, first in kept_first.items():
                    masks[n] |= first
                engine.prune(masks)
                exact = kept_first or pattern is not None
                kept = sum(int(np.count_nonzero(m)) for m in masks.values()) if exact else k
            logger.debug("step %d/%d: kept %d", step + 1, len(counts), kept)
            if state.progress is not None:
                state.progress(step + 1, len(counts))
        state.masks = masks


def _no_flow_message(engine: FlowEngine) -> str:
    """Why R = 0: zero weights on every path (R with unit weights is positive), or no path
    from where flow enters to an output at all (e.g. the outputs read only constants)."""
    cause = (
        "every input-output path crosses a zero weight"
        if engine.flow_with_unit_weights() > -np.inf
        else "no input-output path carries flow whatever the weights are (the outputs reach "
        "the inputs and learned tokens only through constants: a zero factor, a selection "
        "that picks a constant)"
    )
    return f"the network carries no synaptic flow (R = 0): {cause}, so there is nothing to rank"


class _Pattern:
    """N:M sparsity: which layers take it, the target it implies, and the per-step limit."""

    def __init__(self, pattern: tuple[int, int], dag: WeightDag) -> None:
        self.n, self.m = pattern
        self.axes = {
            layer.name: layer.in_axis
            for layer in dag.layers
            if layer.in_axis is not None and fits_pattern(layer.shape, layer.in_axis, self.m)
        }
        self.skipped = [layer.name for layer in dag.layers if layer.name not in self.axes]
        if not self.axes:
            raise OnnxflowError(
                "{opt} fits no layer: no prunable weight has a known "
                "input-channel axis whose length is a multiple of {m}",
                opt=Opt("pattern", (self.n, self.m)),
                m=self.m,
            )
        self.allowed = sum(
            layer.size * self.n // self.m if layer.name in self.axes else layer.size
            for layer in dag.layers
        )

    def target(self, sparsity: float | None, total: int) -> int:
        """Weights kept at the end: what the pattern allows, or fewer with a sparsity."""
        if sparsity is None:
            return self.allowed
        target = round((1.0 - sparsity) * total)
        if target > self.allowed:
            implied = 1.0 - self.allowed / total
            raise OnnxflowError(
                "sparsity {sparsity:g} contradicts {opt}, which already prunes {implied:.4g} "
                "of this model's weights; give a sparsity >= {implied:.4g} or none",
                sparsity=sparsity,
                opt=Opt("pattern", (self.n, self.m)),
                implied=implied,
            )
        if target == 0:
            raise OnnxflowError(f"sparsity {sparsity:g} keeps no weight; choose a lower one")
        return target

    def per_group(self, step: int, steps: int) -> int:
        """Weights allowed per group after `step`: from M down to N over the schedule."""
        return self.m - round((self.m - self.n) * (step + 1) / steps)

    def restrict(
        self, scores: FlowScores, masks: dict[str, np.ndarray], n: int
    ) -> dict[str, np.ndarray]:
        return {
            name: restrict_to_pattern(scores.values[name], mask, self.axes[name], n, self.m)
            if name in self.axes
            else mask
            for name, mask in masks.items()
        }


def _baseline(
    method: str, seed: int, engine: FlowEngine
) -> Callable[[dict[str, np.ndarray]], FlowScores] | None:
    """The paper's baselines as fixed scores on the masked network: |W|, or seeded uniform
    noise. None for SynFlow, whose scores come from the flow engine."""
    if method == "synflow":
        return None
    if method == "magnitude":
        fixed = {n: engine.magnitude(n) for n in engine.weights}
    else:
        rng = np.random.default_rng(seed)
        fixed = {
            n: rng.random(w.shape, dtype=np.float32) + np.float32(1e-6)
            for n, w in engine.weights.items()
        }

    def scores(masks: dict[str, np.ndarray]) -> FlowScores:
        values = {n: v * masks[n] for n, v in fixed.items()}
        return FlowScores(values, dict.fromkeys(values, 0.0), float("nan"))

    return scores
