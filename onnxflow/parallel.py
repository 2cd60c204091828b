"""Per-layer numpy work on every core.

Between two flow-model runs, selection and masking make several passes over all N weights.
numpy releases the GIL inside its loops, so running the layers on threads uses the cores
that onnxruntime uses during the run. A pass over memory goes in pieces (`pieces`), each
worked on through buffers kept by its thread (`scratch`), the pieces in runs per core
(`runs`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Container, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import pairwise
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix=_PREFIX)


_PREFIX = "onnxflow"


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


def runs(
    fn: Callable[[T], R], items: Sequence[T], sizes: Sequence[int], *, least: int = 1 << 20
) -> list[R]:
    """`[fn(x) for x in items]`, the items cut into contiguous runs of about equal total
    size, one run per core (this thread takes the first): a pass over memory in pieces
    then reads it on every core with one hand-off per core, not one per piece (per-piece
    hand-offs made such a pass slower than one thread). Serial when the sizes sum to less
    than `least` or when called from one of the pool's own threads (it could wait on
    itself). An exception from `fn` is re-raised after every run has ended (the first
    in order)."""
    items = list(items)
    workers = min(len(items), os.cpu_count() or 1)
    total = sum(sizes)
    if workers < 2 or total < least or threading.current_thread().name.startswith(_PREFIX):
        return [fn(x) for x in items]
    cuts, acc, share = [0], 0, total / workers
    for i, size in enumerate(sizes):
        acc += size
        if len(cuts) < workers and acc >= share * len(cuts):
            cuts.append(i + 1)
    cuts.append(len(items))

    def run(a: int, b: int) -> list[R]:
        return [fn(x) for x in items[a:b]]

    rest = [_pool().submit(run, a, b) for a, b in pairwise(cuts[1:])]
    try:
        results = run(cuts[0], cuts[1])
    finally:
        for f in rest:  # every run ends before this returns: they may write the caller's arrays
            f.exception()
    for f in rest:
        results += f.result()
    return results


def pieces(
    sizes: Sequence[int], piece: int, whole: Container[int] = ()
) -> list[tuple[int, int, int]]:
    """`(item, start, stop)` cutting each of `sizes` into pieces of `piece` (the last one
    shorter), the items in `whole` into a single piece; empty items give none. A pass over
    memory in pieces keeps each piece, and its scratch, in cache between the operations
    made on it."""
    return [
        (i, start, min(size, start + step))
        for i, size in enumerate(sizes)
        for step in [max(1, size) if i in whole else piece]
        for start in range(0, size, step)
    ]


_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """This thread's buffer `name` of `shape` and `dtype`, allocated once (again when asked
    for another shape): a fresh array per piece would cost a page fault per 4 KiB, more
    than the work on it, and a buffer per thread lets the pieces run on every core."""
    bufs: dict[str, np.ndarray] = _local.__dict__.setdefault("bufs", {})
    buf = bufs.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = bufs[name] = np.empty(shape, dtype)
    return buf
