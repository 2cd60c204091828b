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
    """`[fn(x) for x in items]`, computed on a thread per core; the first exception raised
    by `fn` is re-raised here."""
    items = list(items)
    if len(items) < 2 or (os.cpu_count() or 1) < 2:
        return [fn(x) for x in items]
    return list(_pool().map(fn, items))
