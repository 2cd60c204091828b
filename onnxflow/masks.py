"""From scores to masks: exact top-k selection (the schedule is `onnxflow.pruning.schedule`).

Selection keeps exactly the requested number of weights. A weight's rank is its score
`value * exp(unit)` compared as a float64 log; ties are broken by position (layers in network
order, then C order within a layer), so the same scores always give the same masks. Pruned
weights are never selected again, and an unpruned weight whose score is 0 (its flow is
blocked) ranks below every positive one.

The global threshold avoids sorting all N scores: a sample locates it, one pass per layer
keeps everything above a narrow band around it, and only the weights in the band are
ranked exactly. The band's edges are exact float32 thresholds per layer (`v > t` exactly
where the float64 log-score is above the edge), so whatever the sample, everything above
the band outranks everything in it and the result is the exact top-k. Between two runs of
the flow model this is the loop's own cost, so it makes few passes over the N scores and
allocates no N-sized array (fresh pages cost more than a comparison).

A layer may have one log-unit per input channel (`Scores.per_channel`: it reads channels
whose flows differ by more than float32 spans); its thresholds and keys are then taken per
channel, and within the layer it is ranked by float64 log-scores instead of float32 values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from onnxflow.parallel import pieces, runs, scratch
from onnxflow.pruning.schedule import schedule_counts
from onnxflow.scores import Scores, raise_non_finite

__all__ = [  # schedule_counts: where it was, for the channel mode
    "KEEP_ABOVE",
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

_SAMPLE = 1 << 16
"""Scores sampled to place the band, at least (`_sample_step`)."""
KEEP_ABOVE = 1 << 26
"""Up to this many weights, selection writes the new masks beside the old ones (a second
byte per weight), so its band pass writes the masks' "above the band" booleans at once;
beyond, it writes over the old masks and compares those scores again once the band is
known, so that large models never hold a second byte per weight."""


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k largest entries of a 1-D array; ties go to lower indices."""
    n = values.size
    if k <= 0:
        return np.zeros(n, dtype=bool)
    if k >= n:
        return np.ones(n, dtype=bool)
    if k == 1:  # a layer's best weight (the refiner's pins): argmax takes the first maximum
        keep = np.zeros(n, dtype=bool)
        keep[np.argmax(values)] = True
        return keep
    threshold = kth_smallest(values, n - k)
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
    out: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Keep the k best weights over all layers (one threshold on the log-scores).

    The new masks are written into `out` when it is given (a bool buffer per layer, none
    of them one of `masks`), and `masks` is left as it was: a caller that keeps two sets
    of masks can then undo a step without a copy. Without `out` they are written over
    `masks` (and returned); models above `KEEP_ABOVE` weights then hold no second set of
    N booleans at any time. Scores of pruned weights are set to 0 in place, a pass over all
    scores that `zeroed=True` skips where they are 0 already (the flow engine's scores of
    the masks it was last pruned with).
    """
    total = sum(scores.values[n].size for n in names)
    if out is None and total <= KEEP_ABOVE:
        new = {n: np.empty(masks[n].shape, bool) for n in names}
        select_global(names, scores, masks, k, zeroed=zeroed, out=new)
        for n in names:
            np.copyto(masks[n], new[n])
        return {n: masks[n] for n in names}
    vals = {n: scores.values[n].reshape(-1) for n in names}
    if not zeroed:
        for n in names:
            np.multiply(vals[n], masks[n].reshape(-1), out=vals[n])
    shapes = {n: scores.values[n].shape for n in names}
    units = {n: scores.units[n] for n in names}
    dest = {n: (masks if out is None else out)[n].reshape(-1) for n in names}
    sample, sampled = _sample_keys(names, vals, units, shapes)
    for margin in (2.5, 10.0, math.inf):
        found = _select_band(
            names, vals, units, shapes, k, sample, sampled, margin, dest, early=out is not None
        )
        if found:
            return {n: dest[n].reshape(masks[n].shape) for n in names}
        if found is None:  # no band can hold the threshold: go straight to the fallback
            break
    # Fewer positive scores than k: keep them all, then blocked weights in network order.
    extra = k - sum(int(np.count_nonzero(vals[n] > 0)) for n in names)
    for n in names:
        v, keep = vals[n], dest[n]
        blocked = np.flatnonzero(masks[n].reshape(-1) & (v == 0))[: max(extra, 0)]
        np.greater(v, 0, out=keep)
        keep[blocked] = True
        extra -= blocked.size
    return {n: dest[n].reshape(masks[n].shape) for n in names}


def _per_channel(u: float | np.ndarray) -> bool:
    """Whether a log-unit is one per channel (`np.ndim(u) > 0`, without its dispatch cost:
    selection asks per layer several times a step)."""
    return isinstance(u, np.ndarray) and u.ndim > 0


def _unit_at(u: float | np.ndarray, shape: tuple[int, ...], idx: np.ndarray) -> float | np.ndarray:
    """The log-unit of the entries at flat indices `idx` of a layer of `shape`: its one unit,
    or each entry's channel's."""
    if not _per_channel(u):
        return float(u)
    arr = np.asarray(u)
    multi = np.unravel_index(idx, shape)
    return arr[tuple(m if arr.shape[d] > 1 else 0 * m for d, m in enumerate(multi))]


def _log_keys(
    values: np.ndarray,
    names: Sequence[str],
    counts: Sequence[int],
    units: dict[str, float | np.ndarray],
    shapes: dict[str, tuple[int, ...]],
    index: Callable[[int], np.ndarray],
    *,
    fast: bool = False,
) -> np.ndarray:
    """The float64 log-scores `log(v) + unit` of positive scores `values`, which hold
    `counts[j]` scores of layer `names[j]` after each other; `index(j)` gives their flat
    indices in that layer, asked only of layers with a unit per channel. `fast`: the logs
    are taken in float32 (ten times faster; enough to place a band)."""
    with np.errstate(divide="ignore", under="ignore"):
        keys = np.log(values).astype(np.float64) if fast else np.log(values, dtype=np.float64)
    keys += np.repeat([0.0 if _per_channel(units[n]) else float(units[n]) for n in names], counts)
    start = 0
    for j, (n, count) in enumerate(zip(names, counts, strict=True)):
        if _per_channel(units[n]):  # a unit per channel: each entry's own
            keys[start : start + count] += _unit_at(units[n], shapes[n], index(j))
        start += count
    return keys


def exact_thresholds(bounds: np.ndarray | float, units: np.ndarray) -> np.ndarray:
    """For each log-unit u (and bound b, broadcast with it), the float32 t with `v > t`
    exactly where the key `log(v) + u` (float64, the key `_select_band` ranks by) is above b.

    Keys grow with v, so t is the largest float32 whose own key is <= b: exp(b - u) rounded
    to float32, then moved by single ulps until it is that value. Exact thresholds make the
    band's edges exact: every weight above the band outranks every weight in it. A bound
    of -inf gives 0 (every positive score is above it), +inf gives inf, and so does a unit
    of -inf (a channel no flow reaches: nothing of it is above any bound)."""
    b, u = np.broadcast_arrays(np.asarray(bounds, np.float64), np.asarray(units, np.float64))
    live = (u > -np.inf) & (b < np.inf)  # elsewhere inf
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        x = np.where(live, b - u, 0.0)
        t = np.exp(np.minimum(x, _LOG_F32_MAX)).astype(np.float32)  # 0 below float32's range

        def key(t: np.ndarray) -> np.ndarray:
            return np.log(t, dtype=np.float64) + u

        while (down := live & (key(t) > b)).any():
            t = np.where(down, np.nextafter(t, np.float32(0)), t)
        while True:
            nxt = np.nextafter(t, np.float32(np.inf))
            up = live & (nxt <= _F32_MAX) & (key(nxt) <= b)
            if not up.any():
                break
            t = np.where(up, nxt, t)
    return np.where(live, t, np.float32(np.inf))


def _sample_keys(
    names: Sequence[str],
    vals: dict[str, np.ndarray],
    units: dict[str, float | np.ndarray],
    shapes: dict[str, tuple[int, ...]],
) -> tuple[np.ndarray, int]:
    """Log-scores of a regular sample of the positive scores (unordered), and the number of
    entries (positive or not) the sample was drawn from. The sample only places the band,
    which is then counted exactly, so its logs are taken in float32 (ten times faster); it
    is drawn from all layers in one strided copy, and each sampled score is checked to be
    finite (the runs after the dense one check no more than this sample)."""
    total = sum(v.size for v in vals.values())
    step = _sample_step(total)
    s = np.concatenate([_NO_SCORES] + [vals[n][::step] for n in names])
    lens = [-(-vals[n].size // step) for n in names]  # len(v[::step])
    if not np.isfinite(s).all():
        first = int(np.argmin(np.isfinite(s)))
        raise_non_finite(names[int(np.searchsorted(np.cumsum(lens), first, "right"))])
    pos = (s > 0).nonzero()[0]
    starts = np.cumsum([0, *lens])
    cuts = np.searchsorted(pos, starts)
    keys = _log_keys(
        s[pos],
        names,
        np.diff(cuts).tolist(),
        units,
        shapes,
        lambda j: (pos[cuts[j] : cuts[j + 1]] - starts[j]) * step,
        fast=True,
    )
    return keys, int(starts[-1])


def _sample_step(total: int) -> int:
    """Every how many scores one is sampled: about 3 N^(2/3) of N, no fewer than about
    `_SAMPLE` and at most 2^19 (a few MB, whatever the model). Each sampled score costs a
    cache line, and the band it places (the scores ranked exactly) holds about
    N / sqrt(samples) scores; their sum is least near N^(2/3) samples (measured: 65k
    samples as good as any on 3.5M weights, 130-260k best on 25.5M).

    The step is a prime: layer widths are products of 2, 3 and 5, and a step sharing a
    factor with a width samples only some input channels, which SynFlow prunes whole (a
    step of 50 on MobileNetV2 missed the band at six steps in a row)."""
    step = max(1, total // min(max(_SAMPLE, int(3 * total ** (2 / 3))), 1 << 19))
    while step > 1 and any(step % d == 0 for d in range(2, math.isqrt(step) + 1)):
        step += 1
    return step


def kth_smallest(x: np.ndarray, k: int) -> float:
    """`np.partition(x, k)[k]` for a 1-D array without NaN, without partitioning all of a
    large `x` (np.partition costs ~10 ns a value here): a sorted subsample brackets the
    value, one pass counts what lies below the bracket, and only the values inside it are
    partitioned (all of `x` if the bracket missed)."""
    n = x.size
    if n <= _SUBSAMPLE:
        return float(np.partition(x, k)[k])
    sub = np.sort(x[:: max(8, n // _SUBSAMPLE)])
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
_F32_MAX = float(np.finfo(np.float32).max)
_LOG_F32_MAX = math.log(_F32_MAX)
_LOG_F32_MIN = math.log(float(np.finfo(np.float32).smallest_subnormal))


def _layer_thresholds(
    hi: float, lo: float, names: Sequence[str], units: dict[str, float | np.ndarray]
) -> dict[str, tuple[Any, Any]]:
    """`exact_thresholds` of both band edges for every layer: float32 scalars for layers
    with one unit (all of them in one vectorized call), arrays for per-channel units."""
    single = [n for n in names if not _per_channel(units[n])]
    u = np.array([float(units[n]) for n in single])
    t = exact_thresholds(np.array([[hi], [lo]]), u)
    out: dict[str, tuple[Any, Any]] = dict(zip(single, zip(t[0], t[1], strict=True), strict=True))
    for n in names:
        if _per_channel(units[n]):
            u = np.asarray(units[n])
            out[n] = (exact_thresholds(hi, u), exact_thresholds(lo, u))
    return out


def _band_pass(
    names: Sequence[str],
    vals: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, ...]],
    edges: dict[str, tuple[Any, Any]],
    above: dict[str, np.ndarray] | None,
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Each layer's count of scores above its upper edge, and the flat indices and the
    scores of those in (lower edge, upper edge]; the booleans of the first are written into
    `above` when it is given. The band's scores are gathered piece by piece while the piece
    is in cache (gathered afterwards, layer by layer, they cost a cache miss each).

    One-unit layers are compared in pieces of `_CHUNK` scores through scratch buffers kept
    by each thread (a fresh N-byte array costs a page fault per 4 KiB, more than the
    comparison), the second comparison reading the piece from cache. The pieces go to the
    cores in contiguous runs of equal size (`parallel.runs`), one hand-off per core: with
    one per piece (`parallel.each`) two threads were slower than one. Each piece's result
    depends on that piece alone, so the split changes nothing in them."""
    per_channel = {i for i, n in enumerate(names) if isinstance(edges[n][0], np.ndarray)}
    cuts = pieces([vals[n].size for n in names], _CHUNK, whole=per_channel)

    def piece(i: int, start: int, stop: int) -> tuple[int, np.ndarray, np.ndarray]:
        n = names[i]
        t_hi, t_lo = edges[n]
        if isinstance(t_hi, np.ndarray):  # per-channel edges broadcast over the layer's shape
            v = vals[n].reshape(shapes[n])
            a = np.empty(shapes[n], bool) if above is None else above[n].reshape(shapes[n])
            np.greater(v, t_hi, out=a)
            inside = v > t_lo
            np.not_equal(inside, a, out=inside)
            idx = np.flatnonzero(inside)
            return int(np.count_nonzero(a)), idx, vals[n][idx]
        chunk, buf = vals[n][start:stop], scratch("band", (2, _CHUNK), bool)
        a = buf[0, : stop - start] if above is None else above[n][start:stop]
        np.greater(chunk, t_hi, out=a)
        if not t_lo < t_hi:
            return int(np.count_nonzero(a)), _NONE, _NO_SCORES
        inside = buf[1, : stop - start]
        np.greater(chunk, t_lo, out=inside)
        np.not_equal(inside, a, out=inside)
        idx = inside.nonzero()[0]
        return int(np.count_nonzero(a)), idx + start if start else idx, chunk[idx]

    sizes = [stop - start for _, start, stop in cuts]
    results = runs(lambda p: piece(*p), cuts, sizes, least=_PARALLEL_ABOVE)
    counts = [0] * len(names)
    parts: list[list[np.ndarray]] = [[_NONE] for _ in names]
    found: list[list[np.ndarray]] = [[_NO_SCORES] for _ in names]
    for (i, _, _), (count, idx, v) in zip(cuts, results, strict=True):
        counts[i] += count
        if idx.size:
            parts[i].append(idx)
            found[i].append(v)
    return [
        (c, p[-1], f[-1]) if len(p) < 3 else (c, np.concatenate(p), np.concatenate(f))
        for c, p, f in zip(counts, parts, found, strict=True)
    ]


_NONE = np.zeros(0, np.intp)
_NO_SCORES = np.zeros(0, np.float32)
_CHUNK = 1 << 18
_PARALLEL_ABOVE = 1 << 20
"""Scores from which `_band_pass` runs on every core (below, a hand-off costs more)."""


def _select_band(
    names: Sequence[str],
    vals: dict[str, np.ndarray],
    units: dict[str, float | np.ndarray],
    shapes: dict[str, tuple[int, ...]],
    k: int,
    sample: np.ndarray,
    sampled: int,
    margin: float,
    dest: dict[str, np.ndarray],
    *,
    early: bool,
) -> bool | None:
    """Keep all scores above a band around the estimated threshold and rank the band exactly,
    writing the masks into `dest`. False if the band missed the threshold (then a wider one
    is tried); None if there are fewer positive scores than k (the band reached down to 0
    and still held too few). `early`: `dest` may be written before the band is known to
    hold the threshold (it is not the old masks), so the band pass writes the booleans
    above the band straight into it; else (`dest` untouched on a miss) they are counted
    in scratch buffers and compared again once the band is known to be right."""
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
    edges = _layer_thresholds(hi, lo, names, units)
    bands = _band_pass(names, vals, shapes, edges, dest if early else None)
    need = k - sum(above for above, _, _ in bands)
    sizes = [idx.size for _, idx, _ in bands]
    if need > sum(sizes) and lo == -math.inf:
        return None
    if need < 0 or need > sum(sizes):
        return False
    # The band is in (layer, index) order, so top_k's tie-break by position is ours; its
    # edges are exact, so everything above it outranks all of it.
    band = [(n, idx) for n, (_, idx, _) in zip(names, bands, strict=True) if idx.size]
    keys = _log_keys(
        np.concatenate([_NO_SCORES] + [v for _, idx, v in bands if idx.size]),
        [n for n, _ in band],
        [idx.size for _, idx in band],
        units,
        shapes,
        lambda j: band[j][1],
    )
    chosen = np.flatnonzero(top_k(keys, need))
    if not early:
        for n in names:
            shape = shapes[n] if _per_channel(units[n]) else (-1,)
            np.greater(vals[n].reshape(shape), edges[n][0], out=dest[n].reshape(shape))
    ends = np.cumsum([idx.size for _, idx in band])
    cuts = np.searchsorted(chosen, ends)
    first = 0
    for (n, idx), end, cut in zip(band, ends, cuts, strict=True):
        if cut > first:
            dest[n][idx[chosen[first:cut] - (end - idx.size)]] = True
        first = cut
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
