"""SynFlow's steps at the edge of collapse, checked and split (`Refiner`).

At the edge of compression one step can remove a whole layer at once (a layer's last few
weights tie at the lowest score) or cut every path (R = 0) although removing them one by one,
rescoring in between, would not. SynFlow steps are therefore checked once few weights are
left: a step that would empty a layer or leave R = 0 is undone and split in two halves,
each followed by a rescoring, down to single weights (at most `_SPLITS` splits a step);
past that, a layer about to be emptied keeps its best weight while every layer can keep one.
The counts at the end of each scheduled step, and so the final count, stay as scheduled.
One-shot pruning (`iterations=1`) is left as the paper defines it.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from onnxflow.masks import reserve
from onnxflow.pruning.scorers import SynFlowScorer
from onnxflow.pruning.selector import Selector
from onnxflow.scores import FlowScores, Scores

logger = logging.getLogger(__name__)

# Steps that leave at most this many weights are checked for R = 0 (they could cut the last
# paths without emptying a layer); above it, only steps that could empty a layer are checked.
_CHECK_R_BELOW = 1 << 16
# Models up to this many weights are refined (the undo holds a second set of N booleans).
REFINE_MAX = 1 << 26
# A layer whose dense scores sum to R within this (in log) is a cut (theorem 2).
_CUT_TOLERANCE = 1e-3
# A step removing at most 1/_FEW_REMOVED of the weights has the engine zero just those (found
# by comparing byte masks) instead of multiplying every weight by its mask: measured on
# MobileNetV2's steps, the comparison wins where 0.3% of the weights change, loses at 1.8%.
_FEW_REMOVED = 256
# Splits allowed per scheduled step (each costs one more flow-model run): enough to take a
# step of a few weights one at a time; past it, layers about to be emptied keep their best.
_SPLITS = 4


def _layer_log_sum(scores: Scores, name: str) -> float:
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


class Refiner:
    """Checks and splits the steps of SynFlow's schedule where they would collapse.

    A step that would empty a layer or leave R = 0 is undone and split in halves, with a
    rescoring between them, at most `_SPLITS` times per scheduled step (each split costs one
    flow-model run). Past that, or at a single weight, a layer about to be emptied keeps its
    best weight instead while every layer can keep one (k at least the number of non-empty
    layers): a residual branch is no cut, and its last weights can score lowest of all,
    rescored or not.

    Selection writes each step's masks into a second set of buffers (N bytes, allocated
    once), so the masks the step started from stay as they were: undoing a step costs
    nothing, and once a step is kept its old masks are the buffers of the next. Each
    selection is counted once per layer, which tells the layers it emptied or changed.
    R is checked (one flow-model run, the next step's scores when the step stands) only
    where a split could follow and few weights are left (`_CHECK_R_BELOW`); elsewhere the
    next scoring runs the model, so the last step costs no run of its own.
    """

    def __init__(
        self,
        scorer: SynFlowScorer,
        select: Selector,
        masks: dict[str, np.ndarray],
        dense: FlowScores,
    ) -> None:
        self.scorer, self.select = scorer, select
        self.size = sum(m.size for m in masks.values())
        self.counts = _count(masks)
        """Weights kept per layer by the masks this refiner returned last (the loop hands
        them back at the next step)."""
        self._spare: dict[str, np.ndarray] | None = None
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

    def __call__(
        self, scores: Scores, masks: dict[str, np.ndarray], kept: int, k: int
    ) -> dict[str, np.ndarray]:
        """One scheduled step from `kept` to `k` weights: checked and split where it could
        collapse, else a plain selection that keeps the pinned weights."""
        if self.needed(kept, k):
            masks, self.counts = self._step(scores, masks, self.counts, kept, k, [_SPLITS])
            return masks
        new = self._select(scores, masks, k, self.pins or None)
        self._prune(new, masks, kept - k)
        self._spare, self.counts = masks, _count(new)
        return new

    def _select(
        self,
        scores: Scores,
        masks: dict[str, np.ndarray],
        k: int,
        protect: dict[str, np.ndarray] | None,
    ) -> dict[str, np.ndarray]:
        """The selection of k weights, written into the spare buffers (`masks` untouched)."""
        if self._spare is None:
            self._spare = {n: np.empty_like(m) for n, m in masks.items()}
        return self.select(scores, masks, k, protect, exact_zeros=True, out=self._spare)

    def _prune(
        self, new: dict[str, np.ndarray], masks: dict[str, np.ndarray], removed: int
    ) -> None:
        """Prune the engine to `new`, from `masks`: told them when the step removes few
        weights (`_FEW_REMOVED`), so that it zeroes just those."""
        self.scorer.prune(new, masks if removed * _FEW_REMOVED <= self.size else None)

    def _step(
        self,
        scores: Scores,
        masks: dict[str, np.ndarray],
        counts: dict[str, int],
        kept: int,
        k: int,
        splits: list[int],
    ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """A checked step: the masks it leaves and their counts (`counts`: of `masks`)."""
        live = [n for n, c in counts.items() if c]
        feasible = k >= len(live)
        split = kept - k >= 2
        protect = dict(self.pins)
        flowing = [n for n in live if n not in self.dead]
        new = self._select(scores, masks, k, protect or None)
        after = _count(new)
        emptied = [n for n in flowing if not after[n]]
        while emptied and feasible:
            logger.debug("step %d -> %d empties %s", kept, k, ", ".join(emptied))
            bypassed = [n for n in emptied if n in self.bypassed]
            if bypassed:  # no split helps there: keep their best weight from now on
                pins = reserve(bypassed, scores, masks, 1)
                self.pins |= pins
                protect |= pins
            elif split and splits[0] > 0:
                splits[0] -= 1
                return self._split(scores, masks, counts, kept, k, splits)
            else:
                protect |= reserve(emptied, scores, masks, 1)
            new = self._select(scores, masks, k, protect)
            after = _count(new)
            emptied = [n for n in flowing if not after[n]]
        self._prune(new, masks, kept - k)
        if (
            split
            and splits[0] > 0
            and k <= _CHECK_R_BELOW
            and self.scorer.run().log_flow == -np.inf
        ):
            logger.debug("step %d -> %d leaves R = 0: split", kept, k)
            splits[0] -= 1
            self.scorer.restore(masks, [n for n in live if after[n] < counts[n]])
            return self._split(self.scorer.run(), masks, counts, kept, k, splits)
        self._spare = masks  # the step stands: its old masks are free
        return new, after

    def _split(
        self,
        scores: Scores,
        masks: dict[str, np.ndarray],
        counts: dict[str, int],
        kept: int,
        k: int,
        splits: list[int],
    ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """The step as two refined halves, rescoring after the first."""
        mid = kept - (kept - k) // 2
        masks, counts = self._step(scores, masks, counts, kept, mid, splits)
        return self._step(self.scorer(masks), masks, counts, mid, k, splits)


def _count(masks: dict[str, np.ndarray]) -> dict[str, int]:
    """Weights kept per layer."""
    return {n: int(np.count_nonzero(m)) for n, m in masks.items()}
