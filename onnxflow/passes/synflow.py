"""select(): iterative SynFlow pruning (Tanaka et al. 2020, algorithm 1), or one of the
paper's baselines (magnitude, random) through the same schedule and selection.

Scores are recomputed on the masked network at every step, and the kept count follows the
schedule down to exactly round(density * N). The first step's scores are those of the dense
network and are kept for `--scores`.

At the edge of compression one step can remove a whole layer at once (a layer's last few
weights tie at the lowest score) or cut every path (R = 0) although removing them one by one,
rescoring in between, would not. SynFlow steps are therefore checked once few weights are
left: a step that would empty a layer or leave R = 0 is undone and split in two halves,
each followed by a rescoring, down to single weights (at most `_SPLITS` splits a step);
past that, a layer about to be emptied keeps its best weight while every layer can keep one
(`_Refiner`). The counts at the end of each scheduled step, and so the final count, stay
as scheduled. One-shot pruning
(`iterations=1`) is left as the paper defines it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxflow.dag import WeightDag
from onnxflow.errors import OnnxflowError, Opt
from onnxflow.flow.engine import FlowEngine, FlowScores
from onnxflow.flow.registry import RuleRegistry
from onnxflow.masks import (
    fits_pattern,
    rank_keys,
    reserve,
    restrict_to_pattern,
    schedule_counts,
    select_global,
    select_local,
)
from onnxflow.options import PruneOptions
from onnxflow.runtime import resolve_provider
from onnxflow.stages import ProgressCallback, Selection

logger = logging.getLogger(__name__)

# Steps that leave at most this many weights are checked for R = 0 (they could cut the last
# paths without emptying a layer); above it, only steps that could empty a layer are checked.
_CHECK_R_BELOW = 1 << 16
# Models up to this many weights are refined (the undo holds a second set of N booleans).
_REFINE_MAX = 1 << 26
# A layer whose dense scores sum to R within this (in log) is a cut (theorem 2).
_CUT_TOLERANCE = 1e-3
# Splits allowed per scheduled step (each costs one more flow-model run): enough to take a
# step of a few weights one at a time; past it, layers about to be emptied keep their best.
_SPLITS = 4


def select(
    graph: gs.Graph,
    dag: WeightDag,
    opts: PruneOptions,
    *,
    rules: RuleRegistry | None = None,
    progress: ProgressCallback | None = None,
    keep_scores: bool = True,
) -> Selection:
    """Run the pruning loop on an analyzed graph: the masks it keeps, and the dense scores."""
    total = dag.size
    pattern_skipped: list[str] = []
    log_scores: dict[str, np.ndarray] = {}
    log_flow = float("nan")
    pattern = _Pattern(opts.pattern, dag) if opts.pattern else None
    if pattern is not None:
        pattern_skipped = pattern.skipped
        target = pattern.target(opts.sparsity, total)
    else:
        assert opts.density is not None
        target = round(opts.density * total)
        if target == 0 and opts.density > 0:
            raise OnnxflowError(
                f"sparsity {opts.sparsity} keeps round({opts.density:g} * {total}) = 0 "
                "of the prunable weights; choose a lower sparsity"
            )
    provider = resolve_provider(opts.provider)
    engine = FlowEngine(graph, dag, provider, rules)
    names = [layer.name for layer in dag.layers]
    sizes = [layer.size for layer in dag.layers]
    masks = {layer.name: np.ones(layer.shape, dtype=bool) for layer in dag.layers}
    kept, per_group = total, None
    counts = schedule_counts(total, target / total, opts.iterations, opts.schedule)
    counts[-1] = target
    baseline = _baseline(opts.method, opts.seed, engine)
    engine_scores = baseline is None and pattern is None  # 0 exactly where pruned
    # One-shot (a single iteration) stays the paper's one-shot baseline, unrefined.
    # Local scope keeps each layer's share by construction: nothing to refine there.
    refine = (
        engine_scores and opts.iterations > 1 and opts.scope == "global" and total <= _REFINE_MAX
    )
    pending: FlowScores | None = None  # scores already computed on the current masks

    def choose(
        scores: FlowScores, masks: dict, k: int, protect: dict | None = None
    ) -> dict[str, np.ndarray]:
        return _select(opts, names, sizes, scores, masks, k, protect, exact_zeros=engine_scores)

    refiner: _Refiner | None = None
    for step, k in enumerate(counts):
        limit = pattern.per_group(step, len(counts)) if pattern is not None else None
        if step == 0 or k < kept or limit != per_group:
            per_group = limit
            # Later global selections check a sample of the scores instead of all N.
            check = step == 0 or opts.scope != "global"
            scores: FlowScores | None = pending
            if pending is not None:
                pending = None
            elif step == 0 or baseline is None:
                scores = engine.run(check=check)
            if step == 0:
                assert scores is not None
                if scores.log_flow == -np.inf:
                    raise OnnxflowError(_no_flow_message(engine))
                log_flow = scores.log_flow
            if baseline is not None:
                scores = baseline(masks)
            assert scores is not None
            if step == 0:
                log_scores = scores.log() if keep_scores else {}
                refiner = _Refiner(engine, choose, masks, scores) if refine else None
            if pattern is not None:
                assert limit is not None
                masks = pattern.restrict(scores, masks, limit)
                if opts.sparsity is None:  # the pattern alone: keep every candidate
                    k = sum(int(np.count_nonzero(m)) for m in masks.values())

            if refiner is not None and refiner.needed(kept, k):
                refiner.check = opts.scope != "global"
                masks, pending = refiner.step(scores, masks, kept, k)
            else:
                masks = choose(scores, masks, k, refiner.pins if refiner else None)
                engine.prune(masks)
                if refiner is not None:
                    refiner.counts = {n: int(np.count_nonzero(m)) for n, m in masks.items()}
            exact = opts.min_kept or pattern is not None
            kept = sum(int(np.count_nonzero(m)) for m in masks.values()) if exact else k
        logger.debug("step %d/%d: kept %d", step + 1, len(counts), kept)
        if progress is not None:
            progress(step + 1, len(counts))
    return Selection(masks, log_scores, log_flow, provider, pattern_skipped)


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


no_flow_message = _no_flow_message
"""Public: `api.score` refuses R = 0 with the same words as the pruning loop."""


def _select(
    opts,
    names: list[str],
    sizes: list[int],
    scores: FlowScores,
    masks: dict[str, np.ndarray],
    k: int,
    protect: dict[str, np.ndarray] | None = None,
    *,
    exact_zeros: bool,
) -> dict[str, np.ndarray]:
    """The masks keeping k weights by score, written over `masks`: each layer's `min_kept`
    best and the `protect`ed weights first. `exact_zeros`: the scores are the engine's, 0
    exactly where `masks` pruned."""
    if protect and not opts.min_kept and opts.scope == "global":
        # Protected weights leave the selection: their scores (the engine's buffers, used
        # once) are zeroed where `rest` prunes them, so `zeroed` still holds.
        rest = dict(masks)
        for n, m in protect.items():
            rest[n] = masks[n] & ~m
            np.multiply(scores.values[n], ~m, out=scores.values[n])
        k_rest = max(0, k - sum(int(np.count_nonzero(m & masks[n])) for n, m in protect.items()))
        masks = select_global(names, scores, rest, k_rest, zeroed=exact_zeros)
        for n, m in protect.items():
            masks[n] |= m
        return masks
    kept_first = reserve(names, scores, masks, opts.min_kept) if opts.min_kept else {}
    for n, m in (protect or {}).items():
        kept_first[n] = kept_first[n] | m if n in kept_first else m
    if kept_first:
        kept_first = {n: kept_first.get(n, np.zeros_like(masks[n])) for n in names}
    rest = {n: masks[n] & ~kept_first[n] for n in kept_first} or masks
    k_rest = max(0, k - sum(int(np.count_nonzero(r)) for r in kept_first.values()))
    if opts.scope == "global":
        zeroed = rest is masks and exact_zeros
        masks = select_global(names, scores, rest, k_rest, zeroed=zeroed)
    else:
        masks = select_local(names, scores, rest, k_rest, sizes)
    for n, first in kept_first.items():
        masks[n] |= first
    return masks


Choose = Callable[..., dict[str, np.ndarray]]


def _layer_log_sum(scores: FlowScores, name: str) -> float:
    """Log of the sum of a layer's scores (float64 sums per unit; -inf if all are 0)."""
    v, u = scores.values[name], scores.units[name]
    if np.ndim(u) == 0:
        total = float(v.sum(dtype=np.float64))
        return math.log(total) + float(u) if total > 0 else -math.inf
    u = np.asarray(u)
    axes = tuple(i for i, d in enumerate(u.shape) if d == 1)
    sums = v.sum(axis=axes, keepdims=True, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return float(np.logaddexp.reduce((np.log(sums) + u).ravel()))


class _Refiner:
    """Checks and splits the steps of SynFlow's schedule where they would collapse.

    A step that would empty a layer or leave R = 0 is undone and split in halves, with a
    rescoring between them, at most `_SPLITS` times per scheduled step (each split costs one
    flow-model run). Past that, or at a single weight, a layer about to be emptied keeps its
    best weight instead while every layer can keep one (k at least the number of non-empty
    layers): a residual branch is no cut, and its last weights can score lowest of all,
    rescored or not.

    To undo, the masks are copied into spare buffers (N bytes, allocated once) before the
    steps that can collapse: those that remove at least as many weights as some layer
    holds, or that leave few weights (`_CHECK_R_BELOW`), where R = 0 is possible. Other
    steps cost one count of the masks per layer.
    """

    def __init__(
        self,
        engine: FlowEngine,
        choose: Choose,
        masks: dict[str, np.ndarray],
        dense: FlowScores,
    ) -> None:
        self.engine, self.choose = engine, choose
        self.counts = {n: int(np.count_nonzero(m)) for n, m in masks.items()}
        self._spare: dict[str, np.ndarray] | None = None
        self.check = True
        self.pins: dict[str, np.ndarray] = {}
        """Bypassed layers' last weights, kept at every later step once their layer was
        about to be emptied."""
        self.dead = {n for n in masks if _layer_log_sum(dense, n) == -math.inf}
        """Layers no flow crosses even in the dense network (a branch behind a zero factor,
        under strict zero_init): emptying them loses nothing, they are not kept."""
        self.bypassed = {
            n for n in masks if abs(_layer_log_sum(dense, n) - dense.log_flow) > _CUT_TOLERANCE
        }
        """Layers that are no cut of the dense network (flow bypasses them: residual
        branches, shortcuts): their scores sum below R. Splitting a step does not raise
        their last weights' scores, so they keep their best weight without splits."""

    def needed(self, kept: int, k: int) -> bool:
        """Whether the step from `kept` to `k` weights could empty a layer or cut R."""
        removed = kept - k
        return kept <= _CHECK_R_BELOW or any(
            0 < c <= removed for n, c in self.counts.items() if n not in self.pins
        )

    def step(
        self, scores: FlowScores, masks: dict[str, np.ndarray], kept: int, k: int
    ) -> tuple[dict[str, np.ndarray], FlowScores]:
        """The masks after the step, and the scores of the network they leave (the next
        step's, so the check costs no extra run)."""
        masks, after = self._step(scores, masks, kept, k, [_SPLITS])
        self.counts = {n: int(np.count_nonzero(m)) for n, m in masks.items()}
        return masks, after

    def _step(
        self,
        scores: FlowScores,
        masks: dict[str, np.ndarray],
        kept: int,
        k: int,
        splits: list[int],
    ) -> tuple[dict[str, np.ndarray], FlowScores]:
        if self._spare is None:
            self._spare = {n: np.empty_like(m) for n, m in masks.items()}
        before = self._spare
        for n, m in masks.items():
            np.copyto(before[n], m)
        counts = {n: int(np.count_nonzero(m)) for n, m in masks.items()}
        live = [n for n, c in counts.items() if c]
        feasible = k >= len(live)
        split = kept - k >= 2

        def undo() -> None:  # `choose` writes over `masks`
            for n, m in masks.items():
                np.copyto(m, before[n])

        protect = dict(self.pins)
        flowing = [n for n in live if n not in self.dead]
        new = self.choose(scores, masks, k, protect or None)
        emptied = [n for n in flowing if not new[n].any()]
        while emptied and feasible:
            logger.debug("step %d -> %d empties %s", kept, k, ", ".join(emptied))
            undo()
            bypassed = [n for n in emptied if n in self.bypassed]
            if bypassed:  # no split helps there: keep their best weight from now on
                pins = reserve(bypassed, scores, masks, 1)
                self.pins |= pins
                protect |= pins
            elif split and splits[0] > 0:
                splits[0] -= 1
                return self._split(scores, masks, kept, k, splits)
            else:
                protect |= reserve(emptied, scores, masks, 1)
            new = self.choose(scores, masks, k, protect)
            emptied = [n for n in flowing if not new[n].any()]
        changed = [n for n in live if np.count_nonzero(new[n]) < counts[n]]
        self.engine.prune(new)
        after = self.engine.run(check=self.check)
        if after.log_flow > -np.inf or not split or splits[0] <= 0:
            return new, after
        logger.debug("step %d -> %d leaves R = 0: split", kept, k)
        splits[0] -= 1
        undo()
        self.engine.restore(masks, changed)
        return self._split(self.engine.run(check=self.check), masks, kept, k, splits)

    def _split(
        self,
        scores: FlowScores,
        masks: dict[str, np.ndarray],
        kept: int,
        k: int,
        splits: list[int],
    ) -> tuple[dict[str, np.ndarray], FlowScores]:
        """The step as two refined halves, rescoring after the first. (The spare buffers
        are free again: a split step never undoes.)"""
        mid = kept - (kept - k) // 2
        masks, scores = self._step(scores, masks, kept, mid, splits)
        return self._step(scores, masks, mid, k, splits)


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
            name: restrict_to_pattern(rank_keys(scores, name), mask, self.axes[name], n, self.m)
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
