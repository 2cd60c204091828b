"""The schedule (`onnxflow.pruning.schedule`): how many weights each iteration keeps."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxflow.errors import OnnxflowError
from onnxflow.masks import schedule_counts as schedule_counts_in_masks
from onnxflow.pruning.schedule import density_target, kept_counts, schedule_counts

props = settings(max_examples=200, deadline=None, derandomize=True)


@pytest.mark.parametrize(
    ("total", "density", "iterations", "schedule", "want"),
    [
        (1000, 0.01, 2, "exponential", [100, 10]),
        (1000, 0.001, 3, "exponential", [100, 10, 1]),
        (100, 0.2, 4, "linear", [80, 60, 40, 20]),
        (10, 0.5, 1, "exponential", [5]),
        (10, 0.5, 1, "linear", [5]),
        (7, 1.0, 3, "exponential", [7, 7, 7]),
    ],
)
def test_schedule_counts_examples(
    total: int, density: float, iterations: int, schedule: str, want: list[int]
) -> None:
    assert schedule_counts(total, density, iterations, schedule) == want


@props
@given(
    total=st.integers(1, 10**7),
    density=st.floats(1e-6, 1.0),
    iterations=st.integers(1, 150),
    schedule=st.sampled_from(["exponential", "linear"]),
)
def test_schedule_counts_properties(
    total: int, density: float, iterations: int, schedule: str
) -> None:
    counts = schedule_counts(total, density, iterations, schedule)
    assert len(counts) == iterations
    assert all(isinstance(c, int) for c in counts)
    assert counts[-1] == round(density * total)
    assert counts[0] <= total
    assert all(a >= b for a, b in itertools.pairwise(counts)), "not non-increasing"


@pytest.mark.parametrize("schedule", ["exponential", "linear"])
def test_schedule_counts_follow_their_curve(schedule: str) -> None:
    total, density, n = 10**6, 1e-3, 10
    counts = schedule_counts(total, density, n, schedule)
    for k, c in enumerate(counts, start=1):
        frac = density ** (k / n) if schedule == "exponential" else 1 - (1 - density) * k / n
        assert abs(c - frac * total) <= 0.5


def test_schedule_counts_is_still_importable_from_masks() -> None:
    """The channel mode imports it from `onnxflow.masks`, where it was."""
    assert schedule_counts_in_masks is schedule_counts


@pytest.mark.parametrize(
    ("total", "target", "iterations", "schedule", "want"),
    [
        (1000, 10, 2, "exponential", [100, 10]),
        (100, 20, 4, "linear", [80, 60, 40, 20]),
        # A target that is no round(density * total) of its own density (a pattern's):
        # the fractions before it follow target / total, the last count is the target.
        (3, 2, 3, "exponential", [3, 2, 2]),
        (7, 3, 1, "exponential", [3]),
    ],
)
def test_kept_counts_end_at_the_target(
    total: int, target: int, iterations: int, schedule: str, want: list[int]
) -> None:
    assert kept_counts(total, target, iterations, schedule) == want


@props
@given(
    total=st.integers(1, 10**7),
    data=st.data(),
    iterations=st.integers(1, 150),
    schedule=st.sampled_from(["exponential", "linear"]),
)
def test_kept_counts_properties(
    total: int, data: st.DataObject, iterations: int, schedule: str
) -> None:
    target = data.draw(st.integers(1, total))
    counts = kept_counts(total, target, iterations, schedule)
    assert len(counts) == iterations and counts[-1] == target
    assert counts[:-1] == schedule_counts(total, target / total, iterations, schedule)[:-1]
    assert all(a >= b for a, b in itertools.pairwise(counts)), "not non-increasing"


def test_density_target() -> None:
    assert density_target(0.9, 0.1, 1000) == 100
    assert density_target(0.5, 0.5, 3) == 2  # round half to even: round(1.5)
    with pytest.raises(OnnxflowError, match=r"keeps round\(0.0001 \* 1000\) = 0"):
        density_target(0.9999, 0.0001, 1000)
