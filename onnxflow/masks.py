"""From scores to masks: exact top-k selection (the schedule is `onnxflow.pruning.schedule`).

Selection keeps exactly the requested number of weights. A weight's rank is its score
`value * exp(unit)` compared as a float64 log; ties are broken by position (layers in network
order, then C order within a layer), so the same scores always give the same masks. Pruned
weights are never selected again, and an unpruned weight whose score is 0 (its flow is
blocked) ranks below every positive one.

The global threshold avoids sorting all N scores: a sample locates it, one pass per layer
keeps everything clearly above it, and only the weights in a narrow band around it are
ranked exactly.

A layer may have one log-unit per input channel (`Scores.per_channel`: it reads channels
whose flows differ by more than float32 spans); its thresholds and keys are then taken per
channel, and within the layer it is ranked by float64 log-scores instead of float32 values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from onnxflow.parallel import each
from onnxflow.pruning.schedule import schedule_counts
from onnxflow.scores import Scores, raise_non_finite

__all__ = [  # schedule_counts: where it was, for the channel mode
    "fits_pattern",
    "local_counts",
    "rank_keys",
    "reserve",
    "restrict_to_pattern",
    "schedule_counts",
    "select_global",
    "select_local",
    "top_k",
]

_SAMPLE = 200_000
# Up to this many weights, each layer's "above the band" booleans are kept from the band pass
# to the mask write (one comparison of all scores fewer); beyond, they are computed again so
# that large models never hold a second byte per weight.
_KEEP_ABOVE = 1 << 26


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k largest entries of a 1-D array; ties go to lower indices."""
    n = values.size
    if k <= 0:
        return np.zeros(n, dtype=bool)
    if k >= n:
        return np.ones(n, dtype=bool)
    threshold = np.partition(values, n - k)[n - k]
    keep = values > threshold
    need = k - int(np.count_nonzero(keep))
    if need > 0:
        keep[np.flatnonzero(values == threshold)[:need]] = True
    return keep


def rank_keys(scores: Scores, name: str) -> np.ndarray:
    """Keys that rank one layer's scores exactly (higher is better, 0 scores lowest): the
    float32 values under one unit; float64 log-scores under per-channel units, where a 0
    score gets -1e308 (still above the -inf that `_ranked` gives pruned weights)."""
    v = scores.values[name]
    if not scores.per_channel(name):
        return v
    with np.errstate(divide="ignore"):
        keys = np.log(v, dtype=np.float64) + scores.units[name]
    return np.where(v > 0, keys, -1e308)


def _ranked(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Within one layer: positive scores as they are, blocked (0) above pruned (-inf)."""
    return np.where(mask, values, -np.inf).ravel()


def reserve(
    names: Sequence[str], scores: Scores, masks: dict[str, np.ndarray], per_layer: int
) -> dict[str, np.ndarray]:
    """Each layer's `per_layer` best unpruned weights (all of them if it has fewer)."""
    return {
        n: top_k(
            _ranked(rank_keys(scores, n), masks[n]),
            min(per_layer, int(np.count_nonzero(masks[n]))),
        ).reshape(masks[n].shape)
        for n in names
    }


def select_local(
    names: Sequence[str],
    scores: Scores,
    masks: dict[str, np.ndarray],
    k: int,
    sizes: Sequence[int],
) -> dict[str, np.ndarray]:
    """Keep the same fraction of every layer (its share of k), best weights first."""
    caps = [int(np.count_nonzero(masks[n])) for n in names]
    return {
        n: top_k(_ranked(rank_keys(scores, n), masks[n]), kn).reshape(masks[n].shape)
        for n, kn in zip(names, local_counts(sizes, k, caps), strict=True)
    }


def local_counts(sizes: Sequence[int], k: int, caps: Sequence[int]) -> list[int]:
    """Split k over layers in proportion to their sizes, each at most its cap (the weights it
    still has): layers that would exceed their cap get it, the rest is split again among the
    others (water-filling), and the final split rounds by largest remainder. The counts sum
    to min(k, sum(caps))."""
    counts = [0] * len(sizes)
    active = [i for i in range(len(sizes)) if caps[i] > 0]
    remaining = min(k, sum(caps))
    while active:
        total = sum(sizes[i] for i in active)
        exact = {i: remaining * sizes[i] / total for i in active}
        full = [i for i in active if exact[i] >= caps[i]]
        if not full:
            for i in active:
                counts[i] = math.floor(exact[i])
            order = sorted(active, key=lambda i: (-(exact[i] - counts[i]), i))
            for i in order[: remaining - sum(counts[j] for j in active)]:
                counts[i] += 1
            break
        for i in full:
            counts[i] = caps[i]
            remaining -= caps[i]
        active = [i for i in active if i not in full]
    return counts


def select_global(
    names: Sequence[str],
    scores: Scores,
    masks: dict[str, np.ndarray],
    k: int,
    *,
    zeroed: bool = False,
) -> dict[str, np.ndarray]:
    """Keep the k best weights over all layers (one threshold on the log-scores).

    The new masks are written over `masks` (and returned), so no second set of N booleans
    is held; scores of pruned weights are set to 0 in place, a pass over all scores that
    `zeroed=True` skips where they are 0 already (the flow engine's scores of the masks it
    was last pruned with).
    """
    vals = {n: scores.values[n].reshape(-1) for n in names}
    if not zeroed:
        each(lambda n: np.multiply(vals[n], masks[n].reshape(-1), out=vals[n]), names)
    shapes = {n: scores.values[n].shape for n in names}
    sample, sampled = _sample_keys(names, vals, scores.units, shapes)
    out = {n: masks[n].reshape(-1) for n in names}
    for margin in (4.0, 16.0, math.inf):
        found = _select_band(names, vals, scores.units, shapes, k, sample, sampled, margin, out)
        if found:
            return {n: out[n].reshape(masks[n].shape) for n in names}
        if found is None:  # no band can hold the threshold: go straight to the fallback
            break
    # Fewer positive scores than k: keep them all, then blocked weights in network order.
    extra = k - sum(int(np.count_nonzero(vals[n] > 0)) for n in names)
    for n in names:
        keep, v = out[n], vals[n]  # `out` still holds the old masks here
        blocked = np.flatnonzero(keep & (v == 0))[: max(extra, 0)]
        np.greater(v, 0, out=keep)
        keep[blocked] = True
        extra -= blocked.size
    return {n: out[n].reshape(masks[n].shape) for n in names}


def _unit_at(u: float | np.ndarray, shape: tuple[int, ...], idx: np.ndarray) -> float | np.ndarray:
    """The log-unit of the entries at flat indices `idx` of a layer of `shape`: its one unit,
    or each entry's channel's."""
    if np.ndim(u) == 0:
        return float(u)
    arr = np.asarray(u)
    multi = np.unravel_index(idx, shape)
    return arr[tuple(m if arr.shape[d] > 1 else 0 * m for d, m in enumerate(multi))]


def _thresholds(log_value: float, u: float | np.ndarray) -> np.float32 | np.ndarray:
    """`_linear_threshold(log_value - u)`, per channel for per-channel units."""
    if np.ndim(u) == 0:
        return _linear_threshold(log_value - float(u))
    with np.errstate(invalid="ignore", over="ignore"):
        x = np.nan_to_num(log_value - np.asarray(u), nan=np.inf, posinf=np.inf, neginf=-np.inf)
        t = np.where(x < _LOG_F32_MIN, 0.0, np.exp(np.minimum(x, _LOG_F32_MAX)))
        t = np.where(x > _LOG_F32_MAX, np.inf, t)
    return t.astype(np.float32)


def _sample_keys(
    names: Sequence[str],
    vals: dict[str, np.ndarray],
    units: dict[str, float | np.ndarray],
    shapes: dict[str, tuple[int, ...]],
) -> tuple[np.ndarray, int]:
    """Log-scores of a regular sample of the positive scores (unordered), and the number of
    entries (positive or not) the sample was drawn from."""
    total = sum(v.size for v in vals.values())
    step = max(1, total // _SAMPLE)

    def sample(n: str) -> np.ndarray:
        # One strided read into a contiguous copy: the checks below then read 4 bytes per
        # sampled score, not a cache line each.
        s = np.ascontiguousarray(vals[n][::step])
        if not np.isfinite(s).all():
            raise_non_finite(n)
        pos = np.flatnonzero(s > 0)
        unit = _unit_at(units[n], shapes[n], pos * step)
        return np.log(s[pos], dtype=np.float64) + unit

    sampled = sum(-(-vals[n].size // step) for n in names)  # len(v[::step])
    return np.concatenate(each(sample, names)), sampled


def kth_smallest(x: np.ndarray, k: int) -> float:
    """`np.partition(x, k)[k]` for a 1-D array of finite values, without partitioning all
    of a large `x`: a sorted subsample brackets the value, one pass counts what lies below
    the bracket, and only the values inside it are partitioned (all of `x` if the bracket
    missed)."""
    n = x.size
    if n <= 8 * _SUBSAMPLE:
        return float(np.partition(x, k)[k])
    sub = np.sort(x[:: n // _SUBSAMPLE])
    m = sub.size
    at = k * m / n  # where the value falls in the subsample
    spread = 6.0 * math.sqrt(m * (at / m) * (1 - at / m)) + 8
    low = sub[int(at - spread)] if at - spread >= 0 else -math.inf
    high = sub[int(at + spread)] if at + spread < m else math.inf
    below = int(np.count_nonzero(x < low))
    inside = x[(x >= low) & (x <= high)]
    if below <= k < below + inside.size:
        return float(np.partition(inside, k - below)[k - below])
    return float(np.partition(x, k)[k])


_SUBSAMPLE = 4096
_LOG_F32_MAX = math.log(float(np.finfo(np.float32).max))
_LOG_F32_MIN = math.log(float(np.finfo(np.float32).smallest_subnormal))


def _linear_threshold(log_value: float) -> np.float32:
    """exp(log_value) as a float32 threshold; beyond float32 range it saturates to inf or 0,
    which compares with every float32 value exactly as exp(log_value) would."""
    if log_value > _LOG_F32_MAX:
        return np.float32(np.inf)
    if log_value < _LOG_F32_MIN:
        return np.float32(0.0)
    return np.float32(math.exp(log_value))


def _select_band(
    names: Sequence[str],
    vals: dict[str, np.ndarray],
    units: dict[str, float | np.ndarray],
    shapes: dict[str, tuple[int, ...]],
    k: int,
    sample: np.ndarray,
    sampled: int,
    margin: float,
    out: dict[str, np.ndarray],
) -> bool | None:
    """Keep all scores above a band around the estimated threshold and rank the band exactly,
    writing the masks into `out`. False, with `out` untouched, if the band missed the
    threshold (then a wider one is tried); None, untouched, if there are fewer positive
    scores than k (the band reached down to 0 and still held too few)."""
    total = sum(v.size for v in vals.values())
    hi, lo = math.inf, -math.inf
    if not math.isinf(margin) and sample.size:
        rank = k / total * sampled  # expected position of the threshold in the sample
        frac = min(1.0, k / total)
        spread = margin * (math.sqrt(sampled * frac * (1 - frac)) + 4)
        # Positions counted from the best; np.partition counts from the worst.
        at_hi = sample.size - 1 - min(int(rank - spread), sample.size - 1)
        at_lo = sample.size - 1 - int(rank + spread)
        if rank - spread >= 0:
            hi = kth_smallest(sample, at_hi)
        if at_lo >= 0:
            lo = kth_smallest(sample, at_lo)

    keep_above = total <= _KEEP_ABOVE

    def band(n: str) -> tuple[int, np.ndarray, np.ndarray, Any, np.ndarray | None]:
        v, u = vals[n], units[n]
        t_hi, t_lo = _thresholds(hi, u), _thresholds(lo, u)
        if np.ndim(u):  # per-channel thresholds broadcast over the layer's shape
            v = v.reshape(shapes[n])
        a = (v > t_hi).reshape(-1)
        above = int(np.count_nonzero(a))
        inside = (v > t_lo).reshape(-1)
        np.logical_xor(inside, a, out=inside)  # above is a subset of v > t_lo
        idx = np.flatnonzero(inside)
        keys = np.log(vals[n][idx], dtype=np.float64) + _unit_at(u, shapes[n], idx)
        return above, idx, keys, t_hi, a if keep_above else None

    bands = each(band, names)
    need = k - sum(b[0] for b in bands)
    keys = np.concatenate([b[2] for b in bands])
    if need > keys.size and lo == -math.inf:
        return None  # `out` untouched
    if need < 0 or need > keys.size:
        return False  # `out` untouched
    # The band is in (layer, index) order, so top_k's tie-break by position is ours.
    chosen = top_k(keys, need)
    starts = np.cumsum([0] + [b[1].size for b in bands])

    def write(i: int) -> None:
        n, (_, idx, _, t_hi, above) = names[i], bands[i]
        if above is None:
            shape = shapes[n] if np.ndim(t_hi) else (-1,)
            np.greater(vals[n].reshape(shape), t_hi, out=out[n].reshape(shape))
        else:
            np.copyto(out[n], above)
        out[n][idx[chosen[starts[i] : starts[i + 1]]]] = True

    each(write, range(len(names)))
    return True


def fits_pattern(shape: Sequence[int], axis: int | None, m: int) -> bool:
    """Whether a weight can be split into groups of m along `axis`."""
    return axis is not None and 0 <= axis < len(shape) and shape[axis] % m == 0


def restrict_to_pattern(
    values: np.ndarray, mask: np.ndarray, axis: int, n: int, m: int
) -> np.ndarray:
    """The mask with at most n weights kept in every group of m consecutive weights along
    `axis`: the n best scores among the group's kept weights (ties: lower position)."""
    ranked = np.where(mask, values, -np.inf)
    groups = np.moveaxis(ranked, axis, -1)
    shape = groups.shape
    groups = groups.reshape(*shape[:-1], shape[-1] // m, m)
    order = np.argsort(-groups, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(m), axis=-1)
    best = np.moveaxis((rank < n).reshape(shape), -1, axis)
    return best & mask
