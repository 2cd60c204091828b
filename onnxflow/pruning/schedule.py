"""The schedule: how many weights the loop keeps after each iteration.

The kept fraction shrinks from 1 to the target density over the iterations, geometrically
(`exponential`, the paper's: each step removes the same fraction of what is left) or by
equal counts (`linear`). The last count is the target exactly, whatever the rounding of
the fractions before it.
"""

from __future__ import annotations

from onnxflow.errors import OnnxflowError


def schedule_counts(total: int, density: float, iterations: int, schedule: str) -> list[int]:
    """Number of weights kept after each of the `iterations` steps; the last is round(d*N)."""
    counts = []
    for k in range(1, iterations + 1):
        frac = (
            density ** (k / iterations)
            if schedule == "exponential"
            else (1.0 - (1.0 - density) * k / iterations)
        )
        counts.append(round(frac * total))
    counts[-1] = round(density * total)
    return counts


def kept_counts(total: int, target: int, iterations: int, schedule: str) -> list[int]:
    """Counts after each step, from `total` weights down to exactly `target` (a count the
    constraints may have set: a pattern's target is no round(density * total))."""
    counts = schedule_counts(total, target / total, iterations, schedule)
    counts[-1] = target
    return counts


def density_target(sparsity: float | None, density: float | None, total: int) -> int:
    """Weights kept at the end for a sparsity: round(density * N), at least one."""
    assert density is not None
    target = round(density * total)
    if target == 0 and density > 0:
        raise OnnxflowError(
            f"sparsity {sparsity} keeps round({density:g} * {total}) = 0 "
            "of the prunable weights; choose a lower sparsity"
        )
    return target
