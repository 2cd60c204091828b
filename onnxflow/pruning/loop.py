"""The pruning loop: score the masked network, constrain, select, repeat on a schedule."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from onnxflow.masks import KEEP_ABOVE
from onnxflow.pruning.constraints import NMPattern
from onnxflow.pruning.scorers import Scorer
from onnxflow.pruning.selector import Selector
from onnxflow.scores import Scores

logger = logging.getLogger(__name__)

Masks = dict[str, np.ndarray]


class Step(Protocol):
    def __call__(self, scores: Scores, masks: Masks, kept: int, k: int) -> Masks:
        """The masks after going from `kept` weights to `k` on `scores` (the scorer told)."""
        ...


class PlainStep:
    """Select, then tell the scorer: a step as the paper takes it.

    Up to `KEEP_ABOVE` weights a step writes its masks into a second set of buffers and
    the masks it started from are the next step's buffers: no N-byte array is allocated
    per step (its fresh pages cost more than the comparison that fills it). Above, the
    masks are written over."""

    def __init__(self, select: Selector, scorer: Scorer, *, exact_zeros: bool) -> None:
        self.select, self.scorer, self.exact_zeros = select, scorer, exact_zeros
        self._spare: Masks | None = None

    def __call__(self, scores: Scores, masks: Masks, kept: int, k: int) -> Masks:
        if self._spare is None and sum(m.size for m in masks.values()) <= KEEP_ABOVE:
            self._spare = {n: np.empty_like(m) for n, m in masks.items()}
        new = self.select(scores, masks, k, exact_zeros=self.exact_zeros, out=self._spare)
        self.scorer.prune(new)
        if self._spare is not None:
            self._spare = masks
        return new


def prune_loop(
    masks: Masks,
    counts: Sequence[int],
    scorer: Scorer,
    step: Step,
    *,
    pattern: NMPattern | None = None,
    exact_count: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Masks:
    """Prune `masks` down the scheduled `counts`, rescoring before each step. A step that
    would keep no fewer weights (and tighten no pattern) is skipped. `exact_count`: count
    what a step kept (constraints may keep more than k) instead of taking k."""
    kept, per_group = sum(m.size for m in masks.values()), None
    for i, k in enumerate(counts):
        limit = pattern.per_group(i, len(counts)) if pattern is not None else None
        if i == 0 or k < kept or limit != per_group:
            per_group, scores = limit, scorer(masks)
            if pattern is not None and limit is not None:
                masks, k = pattern.apply(scores, masks, limit, k)
            masks = step(scores, masks, kept, k)
            kept = sum(int(np.count_nonzero(m)) for m in masks.values()) if exact_count else k
        logger.debug("step %d/%d: kept %d", i + 1, len(counts), kept)
        if progress is not None:
            progress(i + 1, len(counts))
    return masks
