"""Constraints every selection respects: `min_kept` per layer and the N:M `pattern`.

(`exclude` acts earlier: excluded weights never enter the weight DAG, so they are not in N.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxflow.dag import WeightDag
from onnxflow.errors import OnnxflowError, Opt
from onnxflow.masks import fits_pattern, rank_keys, reserve, restrict_to_pattern
from onnxflow.scores import Scores


def reserved(
    names: Sequence[str],
    scores: Scores,
    masks: dict[str, np.ndarray],
    min_kept: int,
    protect: dict[str, np.ndarray] | None,
) -> dict[str, np.ndarray]:
    """The weights kept before any ranking, by layer (all layers, or none when nothing is
    reserved): each layer's `min_kept` best unpruned weights, and the `protect`ed ones."""
    first = reserve(names, scores, masks, min_kept) if min_kept else {}
    for n, m in (protect or {}).items():
        first[n] = first[n] | m if n in first else m
    if first:
        first = {n: first.get(n, np.zeros_like(masks[n])) for n in names}
    return first


class NMPattern:
    """N:M sparsity: which layers take it, the target it implies, and the per-step limit.

    Over the schedule the weights allowed per group of M go from M down to N; at each step
    the scores pick, in every group, the best of its kept weights, before the selection.
    """

    def __init__(self, pattern: tuple[int, int], dag: WeightDag, *, alone: bool) -> None:
        """`alone`: no sparsity was given, so every weight the pattern allows is kept."""
        self.n, self.m = pattern
        self.alone = alone
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
        self, scores: Scores, masks: dict[str, np.ndarray], n: int
    ) -> dict[str, np.ndarray]:
        """The masks with at most `n` weights kept per group (new arrays where restricted)."""
        return {
            name: restrict_to_pattern(rank_keys(scores, name), mask, self.axes[name], n, self.m)
            if name in self.axes
            else mask
            for name, mask in masks.items()
        }

    def apply(
        self, scores: Scores, masks: dict[str, np.ndarray], n: int, k: int
    ) -> tuple[dict[str, np.ndarray], int]:
        """The restricted masks and the count to select: `k`, or all that the pattern leaves
        when it sets the target alone."""
        masks = self.restrict(scores, masks, n)
        if self.alone:
            k = sum(int(np.count_nonzero(m)) for m in masks.values())
        return masks, k
