"""Per-layer numpy work on every core.

Between two flow-model runs, selection and masking make several passes over all N weights.
numpy releases the GIL inside its loops, so running the layers on threads uses the cores
that onnxruntime uses during the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="onnxflow")


def each(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`[fn(x) for x in items]`, computed on a thread per core; the exception raised by `fn`
    for the first item (in order) that raised one is re-raised here.

    One task per core, each taking every cores-th item (layers of all sizes in each), not
    one per item: a task costs a few microseconds to hand over, and a network has hundreds
    of layers, many tiny."""
    items = list(items)
    workers = min(len(items), os.cpu_count() or 1)
    if workers < 2:
        return [fn(x) for x in items]

    def batch(start: int) -> list[tuple[R | None, Exception | None]]:
        out: list[tuple[R | None, Exception | None]] = []
        for x in items[start::workers]:
            try:
                out.append((fn(x), None))
            except Exception as e:  # noqa: BLE001 - re-raised in order below
                out.append((None, e))
        return out

    batches = list(_pool().map(batch, range(workers)))
    results = []
    for i in range(len(items)):
        value, error = batches[i % workers][i // workers]
        if error is not None:
            raise error
        results.append(value)
    return results  # type: ignore[return-value]
