"""`onnxflow.parallel`: `each` and `runs` (a list comprehension on every core, in order, errors
in order), `pieces` and the per-thread `scratch` of a pass over memory."""

from __future__ import annotations

import os
import threading
from itertools import pairwise

import numpy as np
import pytest

from onnxflow.parallel import _pool, each, pieces, runs, scratch


def test_results_come_in_order() -> None:
    assert each(lambda x: x * x, range(101)) == [x * x for x in range(101)]
    assert each(lambda x: x, []) == [] and each(lambda x: -x, [3]) == [-3]


def test_every_item_runs_and_the_first_failing_items_error_is_raised() -> None:
    ran: set[int] = set()
    lock = threading.Lock()

    def fn(x: int) -> int:
        with lock:
            ran.add(x)
        if x in (7, 4, 12):
            raise ValueError(f"item {x}")
        return x

    with pytest.raises(ValueError, match="item 4"):
        each(fn, range(20))
    assert ran == set(range(20))


def test_runs_cut_the_items_into_contiguous_runs_of_equal_size() -> None:
    """Results in order; on two or more cores the first run is this thread's and each run is
    a contiguous stretch of items; the sizes, not the counts, balance the runs."""
    where: dict[int, str] = {}
    lock = threading.Lock()

    def fn(x: int) -> int:
        with lock:
            where[x] = threading.current_thread().name
        return 2 * x

    sizes = [1000] + [10] * 99  # one big item, then many small ones
    assert runs(fn, range(100), sizes, least=0) == [2 * x for x in range(100)]
    me = threading.current_thread().name
    threads = [where[x] for x in range(100)]
    changes = sum(a != b for a, b in pairwise(threads))
    assert threads[0] == me
    if (os.cpu_count() or 1) >= 2:
        assert threads[1] != me  # the big item alone is half of the total
        assert changes == len(set(threads)) - 1  # contiguous runs
    assert runs(fn, [], [], least=0) == [] and runs(fn, [4], [1], least=0) == [8]


def test_runs_are_serial_when_small_or_inside_the_pool() -> None:
    """Below `least` and on one of the pool's threads (where waiting on the pool could
    wait on itself) everything runs on the calling thread."""
    seen: set[str] = set()
    lock = threading.Lock()

    def fn(x: int) -> int:
        with lock:
            seen.add(threading.current_thread().name)
        return x

    assert runs(fn, range(10), [1] * 10, least=11) == list(range(10))
    assert seen == {threading.current_thread().name}
    seen.clear()
    inner = _pool().submit(runs, fn, range(10), [1 << 20] * 10, least=0).result()
    assert inner == list(range(10)) and len(seen) == 1


def test_runs_reraise_the_first_error_after_every_run_ended() -> None:
    done: list[int] = []
    lock = threading.Lock()

    def fn(x: int) -> int:
        if x in (3, 8):
            raise ValueError(f"item {x}")
        with lock:
            done.append(x)
        return x

    with pytest.raises(ValueError, match="item 3"):
        runs(fn, range(10), [1] * 10, least=0)
    # the second run (5..9) ran to its own error, whatever the first did
    assert {5, 6, 7} <= set(done) or (os.cpu_count() or 1) < 2


def test_pieces_cut_each_size_and_keep_whole_items_whole() -> None:
    """Pieces of `piece` (the last shorter), one piece for the items in `whole`, none for
    empty items; together they cover every position of every item once, in order."""
    sizes = [10, 0, 4, 7, 3]
    cuts = pieces(sizes, 4, whole={3})
    assert cuts == [(0, 0, 4), (0, 4, 8), (0, 8, 10), (2, 0, 4), (3, 0, 7), (4, 0, 3)]
    for i, size in enumerate(sizes):
        covered = [p for j, a, b in cuts if j == i for p in range(a, b)]
        assert covered == list(range(size))


def test_scratch_is_one_buffer_per_thread_and_name() -> None:
    """The same buffer for the same name, shape and dtype in one thread; another for another
    name, shape or dtype, and for another thread."""
    a = scratch("t", (2, 8), bool)
    assert scratch("t", (2, 8), bool) is a
    assert scratch("u", (2, 8), bool) is not a
    b = scratch("t", (16,), np.float32)
    assert b.shape == (16,) and b.dtype == np.float32
    assert scratch("t", (16,), np.float32) is b
    other: list[np.ndarray] = []
    t = threading.Thread(target=lambda: other.append(scratch("t", (16,), np.float32)))
    t.start()
    t.join()
    assert other[0] is not b
