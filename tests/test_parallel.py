"""`onnxflow.parallel.each`: a list comprehension on every core, in order, errors in order."""

from __future__ import annotations

import threading

import pytest

from onnxflow.parallel import each


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
