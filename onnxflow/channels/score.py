"""Group scores and the selection of groups to remove.

A group's SynFlow score is the flow through its slots: the sum of the SynFlow scores of its
readers' in-slices (conservation: per neuron, in-flow equals out-flow), computed from the
weight engine's per-weight scores of the currently masked network. Scores are combined in
float64 log space (each layer's float32 values carry their own log-unit).

Selection follows the weight mode's schedule on the number of prunable weights kept and
removes the lowest-scored groups greedily; the last step stops as soon as the target is
reached (at most one group, or one `--channel-multiple` bundle, beyond it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from onnxflow.channels.groups import IN, ChannelGroups
from onnxflow.errors import OnnxflowError
from onnxflow.options import RANKINGS as CHANNEL_RANKINGS
from onnxflow.options import check_choice
from onnxflow.pruning.schedule import kept_counts
from onnxflow.scores import Scores

ScoreFn = Callable[[set[int]], np.ndarray]
"""Log-scores by group id of the network with the groups in the set removed."""


class GroupScorer:
    """Turns per-weight flow scores into per-group log-scores."""

    def __init__(self, cg: ChannelGroups, kinds: tuple[str, ...] = (IN,)) -> None:
        self.n = max((g.id for g in cg.groups), default=-1) + 1
        self.readers = [
            (name, axis, gids)
            for (name, axis), gids in cg.claims.items()
            if name in cg.weights and cg.kinds[(name, axis)] in kinds
        ]

    def __call__(self, scores: Scores) -> np.ndarray:
        total = np.full(self.n, -np.inf)
        for name, axis, gids in self.readers:
            v, unit = scores.values[name], scores.units[name]
            if np.ndim(unit):  # one unit per input channel: into float64 under their max
                u = np.asarray(unit)
                unit = float(np.max(u[np.isfinite(u)], initial=0.0))
                v = v.astype(np.float64) * np.exp(u - unit)
            others = tuple(i for i in range(v.ndim) if i != axis)
            per_index = np.sum(v, axis=others, dtype=np.float64) if others else v.astype(float)
            sums = np.bincount(gids, weights=per_index, minlength=self.n)
            with np.errstate(divide="ignore"):
                total = np.logaddexp(total, np.log(sums) + unit)
        return total


@dataclass
class Budget:
    """Prunable weights kept as groups are removed, and the one-channel-per-layer rule.

    A weight's kept entries are the product over its claimed axes of the kept indices
    (times its unclaimed dimensions), so removal updates are O(slices of the group)."""

    cg: ChannelGroups
    kept_axis: dict[tuple[str, int], int] = field(default_factory=dict)
    fixed: dict[str, int] = field(default_factory=dict)
    """Weights of each prunable weight outside every prunable slice."""
    total: int = 0
    """Prunable weights (in the slices of prunable groups)."""
    kept: int = 0
    touches: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    counts: list[int] = field(default_factory=list)
    weight_axes: dict[int, list[tuple[str, int, int]]] = field(default_factory=dict)
    _cache: dict[str, int] = field(default_factory=dict)
    _axes: dict[str, tuple[int, list[int]]] = field(default_factory=dict)
    last: int = 0
    """Prunable weights the last removal took (the overshoot is at most this)."""

    def __post_init__(self) -> None:
        cg = self.cg
        prunable = {g.id for g in cg.prunable}
        axes: dict[str, list[int]] = {}
        for (name, axis), gids in cg.claims.items():
            if name in cg.weights:
                axes.setdefault(name, []).append(axis)
                self.kept_axis[(name, axis)] = len(gids)
        live = np.fromiter(prunable, np.int64)
        for name, ax_list in axes.items():
            shape = cg.shapes[name]
            other = math.prod(d for i, d in enumerate(shape) if i not in ax_list)
            self._axes[name] = (other, ax_list)
            fixed = other
            for ax in ax_list:
                fixed *= int(np.count_nonzero(~np.isin(cg.claims[(name, ax)], live)))
            self.fixed[name] = fixed
            self.total += math.prod(shape) - fixed
        self.kept = self.total
        # Constraints: every claimed axis and every traced tensor keeps one position.
        arrays = list(cg.claims.items())
        for c, gids in enumerate([g for _, g in arrays] + cg.tensors):
            self.counts.append(len(gids))
            ids, n = np.unique(gids, return_counts=True)
            for g, k in zip(ids.tolist(), n.tolist(), strict=True):
                if g in prunable:
                    self.touches.setdefault(g, []).append((c, k))
        for (name, axis), gids in arrays:
            if name in cg.weights:
                ids, n = np.unique(gids, return_counts=True)
                for g, k in zip(ids.tolist(), n.tolist(), strict=True):
                    self.weight_axes.setdefault(g, []).append((name, axis, k))

    def copy(self) -> Budget:
        """A budget to try removals on (the tables are shared; counts are copied)."""
        other = copy.copy(self)
        other.kept_axis = dict(self.kept_axis)
        other.counts = list(self.counts)
        other._cache = dict(self._cache)
        return other

    def _weights_kept(self, name: str) -> int:
        other, claimed = self._axes[name]
        return other * math.prod(self.kept_axis[(name, ax)] for ax in claimed)

    def can_remove(self, unit: list[int]) -> bool:
        need: dict[int, int] = {}
        for g in unit:
            for c, k in self.touches.get(g, []):
                need[c] = need.get(c, 0) + k
        return all(self.counts[c] - k >= 1 for c, k in need.items())

    def remove(self, unit: list[int]) -> None:
        start = self.kept
        names: set[str] = set()
        for g in unit:
            for c, k in self.touches.get(g, []):
                self.counts[c] -= k
            for name, axis, k in self.weight_axes.get(g, []):
                self.kept_axis[(name, axis)] -= k
                names.add(name)
        for name in names:
            before = self._cache.get(name, math.prod(self.cg.shapes[name]))
            after = self._weights_kept(name)
            self._cache[name] = after
            self.kept -= before - after
        self.last = start - self.kept


AUTO = "auto"
"""`channel_multiple="auto"` (the default): every layer's kept channel count stays a multiple
of `AUTO_MULTIPLE` while it is above it, and is free below it."""
AUTO_MULTIPLE = 16
"""The channel block of onnxruntime's NCHWc convolution kernels on AVX-512 CPUs (AVX2: 8,
which multiples of 16 also fill). onnxruntime's nchwc_transformer gives a convolution those
kernels only when its input channels are a multiple of the block or fewer than it (and a
grouped one's output channels a multiple of it); any other count runs the plain NCHW path
with reorders around it. Measured on ResNet-50 and MobileNetV2 at sparsity 0.5: free counts
leave most multiply-accumulates off the fast path and the compact model barely faster than
the dense one (MobileNetV2: slower), counts kept as "auto" keeps them fast
(docs/channels.md)."""

Multiple = int | str
"""A channel multiple: an integer K >= 1, or `AUTO`."""


def home_multiples(cg: ChannelGroups, multiple: Multiple) -> dict[str, int]:
    """The multiple K of each home tensor (the tensor where a group's channels are made)."""
    k = AUTO_MULTIPLE if multiple == AUTO else multiple
    assert isinstance(k, int)
    return {g.home: k for g in cg.groups}


def units(
    cg: ChannelGroups, scores: np.ndarray, removed: set[int], multiple: Multiple
) -> list[list[int]]:
    """What the selector may remove, lowest score first: single groups, or with a multiple
    K > 1 bundles that keep each home tensor's channel count a multiple of K (its
    lowest-scored `count % K` groups first, then K at a time). An integer K never takes a
    home's last K; `AUTO` takes single groups once a home is down to K (free below K)."""
    live = [g for g in cg.prunable if g.id not in removed]
    if multiple == 1:
        order = sorted(live, key=lambda g: (scores[g.id], g.id))
        return [[g.id] for g in order]
    ks = home_multiples(cg, multiple)
    homes: dict[str, list[int]] = {}
    for g in cg.groups:
        if g.id not in removed:
            homes.setdefault(g.home, []).append(g.id)
    prunable = {g.id for g in live}
    free_below = multiple == AUTO
    out: list[tuple[float, list[int]]] = []
    for home, members in homes.items():
        k = ks[home]
        free = sorted((g for g in members if g in prunable), key=lambda g: (scores[g], g))
        count, start = len(members), 0
        while start < len(free):
            size = 1 if free_below and count <= k else count % k or k
            bundle = free[start : start + size]
            if len(bundle) < size:
                break  # cannot reach the next multiple within this home
            out.append((float(np.max(scores[bundle])), bundle))
            start += size
            count -= size
    out.sort(key=lambda t: (t[0], t[1][0]))
    return [b for _, b in out]


RANKINGS = CHANNEL_RANKINGS  # the one set, in onnxflow/options.py
DEFAULT_RANKING = "flow-per-flop"
"""Measured on ResNet-50 and MobileNetV2 (docs/channels.md): at the same weight sparsity it
leaves the fewest FLOPs and the lowest latency, for a somewhat lower retained flow R."""


def group_weights(cg: ChannelGroups, uses: dict[str, int] | None = None) -> np.ndarray:
    """Weights in each group's slices by group id; with `uses` (per weight layer), the
    multiply-accumulates they perform."""
    sizes = np.zeros(max((g.id for g in cg.groups), default=-1) + 1)
    per_index: dict[tuple[str, int], int] = {}  # weights behind one index of a tensor axis
    for g in cg.groups:
        total = 0
        for s in g.slices:
            if s.weight:
                key = (s.tensor, s.axis)
                factor = per_index.get(key)
                if factor is None:
                    shape = cg.shapes[s.tensor]
                    factor = math.prod(shape) // shape[s.axis]
                    factor *= uses.get(s.tensor, 1) if uses is not None else 1
                    per_index[key] = factor
                total += len(s.index) * factor
        sizes[g.id] = total
    return sizes


def max_removable(
    cg: ChannelGroups, multiple: Multiple, budget: Budget, sizes: np.ndarray | None = None
) -> int:
    """Prunable weights removable at most (each layer keeping a channel): greedy, smallest
    groups last so the kept channel is a small one. `sizes`: `group_weights(cg)`."""
    budget = budget.copy()
    sizes = group_weights(cg) if sizes is None else sizes
    for unit in units(cg, -sizes, set(), multiple):
        if budget.can_remove(unit):
            budget.remove(unit)
    return budget.total - budget.kept


@dataclass
class Selection:
    removed: set[int]
    scores: np.ndarray
    """Group log-scores of the dense network (-inf: no flow)."""
    budget: Budget


def select_groups(
    cg: ChannelGroups,
    score: ScoreFn,
    sparsity: float,
    iterations: int,
    schedule: str,
    multiple: Multiple = 1,
    progress: Callable[[int, int], None] | None = None,
    ranking: str = "flow",
    uses: dict[str, int] | None = None,
) -> Selection:
    """Remove the lowest-scored groups, rescoring after each step of the schedule, until at
    least `sparsity` of the prunable weights are gone.

    `ranking` is `flow` (a group's flow), `flow-per-weight` (its flow divided by the
    weights in its slices: large groups are not kept only for being large) or
    `flow-per-flop` (divided by the multiply-accumulates of its slices, from `uses`, the
    weight layers' uses per weight: the flow a group brings per unit of compute)."""
    budget = Budget(cg)
    total = budget.total
    if total == 0:
        raise OnnxflowError(no_prunable_message(cg))
    goal = total - math.ceil(sparsity * total - 1e-9)
    sizes = group_weights(cg)
    reachable = max_removable(cg, multiple, budget, sizes)
    if total - goal > reachable:
        raise OnnxflowError(
            f"sparsity {sparsity:g} cannot be reached by removing channels: at most "
            f"{reachable / total:.4f} of the {total:,} prunable weights can go (each layer keeps "
            f"a channel{_multiple_clause(cg, multiple)}); choose a lower sparsity"
        )
    counts = kept_counts(total, goal, iterations, schedule)
    removed: set[int] = set()
    check_choice("ranking", ranking, RANKINGS)
    offset = np.zeros(len(sizes))
    if ranking != "flow":
        costs = group_weights(cg, uses) if ranking == "flow-per-flop" else sizes
        offset = np.log(np.maximum(costs, 1))
    dense = score(removed)
    current = dense - offset
    for step, k in enumerate(counts):
        if budget.kept > k:
            if step > 0:
                current = score(removed) - offset
            for unit in units(cg, current, removed, multiple):
                if budget.kept <= k:
                    break
                if budget.can_remove(unit):
                    budget.remove(unit)
                    removed.update(unit)
        if progress is not None:
            progress(step + 1, len(counts))
    if budget.kept > goal:
        raise OnnxflowError(
            f"sparsity {sparsity:g} cannot be reached by removing channels in this order: "
            f"{1 - budget.kept / total:.4f} of the prunable weights removed; choose a lower one"
        )
    return Selection(removed, dense.copy(), budget)


def _multiple_clause(cg: ChannelGroups, multiple: Multiple) -> str:
    """What the channel multiple adds to the reachable-sparsity error: nothing for 1, nor
    for "auto" when no layer is wider than its block."""
    if multiple == AUTO:
        widths: dict[str, int] = {}
        for g in cg.groups:
            widths[g.home] = widths.get(g.home, 0) + 1
        if max(widths.values(), default=0) <= AUTO_MULTIPLE:
            return ""
        return f", wider ones keep multiples of {AUTO_MULTIPLE} until {AUTO_MULTIPLE}"
    return f", channel counts stay multiples of {multiple}" if multiple != 1 else ""


def no_prunable_message(cg: ChannelGroups) -> str:
    why = ", ".join(f"{n} {reason}" for reason, n in cg.frozen_summary().items())
    return f"no prunable channel group: {len(cg.groups)} groups, all frozen" + (
        f" ({why})" if why else ""
    )
