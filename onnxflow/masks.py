"""From scores to masks: the pruning schedule and exact top-k selection.

Selection keeps exactly the requested number of weights. Scores are compared as float64
natural logs; ties are broken by position (layers in network order, then C order within a
layer), so the same scores always give the same masks. Already-pruned weights are never
selected again, and a weight with zero score (flow blocked) ranks below every positive one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Rank of an unpruned weight whose score is 0: below any real log-score, above pruned ones.
_ZERO_SCORE = -1e300


def schedule_counts(total: int, density: float, iterations: int, schedule: str) -> list[int]:
    """Number of weights kept after each of the `iterations` steps; the last is round(d*N)."""
    counts = []
    for k in range(1, iterations + 1):
        frac = density ** (k / iterations) if schedule == "exponential" else (
            1.0 - (1.0 - density) * k / iterations
        )
        counts.append(round(frac * total))
    counts[-1] = round(density * total)
    return counts


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k largest entries of a 1-D array; ties go to lower indices."""
    n = values.size
    keep = np.zeros(n, dtype=bool)
    if k <= 0:
        return keep
    if k >= n:
        keep[:] = True
        return keep
    threshold = np.partition(values, n - k)[n - k]
    keep = values > threshold
    need = k - int(np.count_nonzero(keep))
    if need > 0:
        keep[np.flatnonzero(values == threshold)[:need]] = True
    return keep


def _rank_values(log_scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    v = np.where(np.isneginf(log_scores), _ZERO_SCORE, log_scores)
    v[~mask] = -np.inf
    return v.ravel()


def select_global(
    names: Sequence[str], log_scores: dict[str, np.ndarray], masks: dict[str, np.ndarray], k: int
) -> dict[str, np.ndarray]:
    """Keep the k best weights over all layers (one threshold)."""
    flat = np.concatenate([_rank_values(log_scores[n], masks[n]) for n in names])
    keep = top_k(flat, k)
    out, start = {}, 0
    for n in names:
        size = masks[n].size
        out[n] = keep[start:start + size].reshape(masks[n].shape)
        start += size
    return out


def local_counts(sizes: Sequence[int], k: int, caps: Sequence[int]) -> list[int]:
    """Split k over layers in proportion to their sizes, each at most its cap (the weights it
    still has), by largest remainder: the counts sum to k whenever the caps allow."""
    total = sum(sizes)
    exact = [k * s / total for s in sizes]
    counts = [min(math.floor(e), c) for e, c in zip(exact, caps, strict=True)]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    while sum(counts) < k and any(c < cap for c, cap in zip(counts, caps, strict=True)):
        for i in order:
            if sum(counts) < k and counts[i] < caps[i]:
                counts[i] += 1
    return counts


def select_local(
    names: Sequence[str], log_scores: dict[str, np.ndarray], masks: dict[str, np.ndarray],
    k: int, sizes: Sequence[int],
) -> dict[str, np.ndarray]:
    """Keep the same fraction of every layer (its share of k), best weights first."""
    return {
        n: top_k(_rank_values(log_scores[n], masks[n]), kn).reshape(masks[n].shape)
        for n, kn in zip(
            names, local_counts(sizes, k, [int(masks[n].sum()) for n in names]), strict=True
        )
    }
