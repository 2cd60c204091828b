"""From scores to masks (`onnxflow.masks`): exact, deterministic top-k (the schedule is in
test_schedule.py).

Scores come as `Scores`: float32 values and a float64 log-unit per layer, the score being
`value * exp(unit)`. A pruned weight's value is 0 (the engine zeroes |W| before the run).
The reference ranking: unpruned positive scores by log-score, then unpruned zero scores
(blocked flow), then pruned weights; ties by layer order, then C-order index.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import onnxflow.masks as masks_module
from onnxflow.errors import OnnxflowError
from onnxflow.masks import local_counts, select_global, select_local, top_k
from onnxflow.scores import Scores

props = settings(max_examples=200, deadline=None, derandomize=True)

NINF = -np.inf


def fresh(masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """select_global writes its result over the masks it is given: pass copies."""
    return {n: m.copy() for n, m in masks.items()}


def reference_top_k(values: np.ndarray, k: int) -> np.ndarray:
    """The k largest by a stable sort: equal values go to the lower index."""
    order = np.lexsort((np.arange(values.size), -values))
    keep = np.zeros(values.size, dtype=bool)
    keep[order[: max(k, 0)]] = True
    return keep


# ---- top_k ----------------------------------------------------------------------------------


def test_top_k_ties_go_to_lower_indices() -> None:
    v = np.array([1.0, 3.0, 3.0, 3.0, 2.0, 3.0])
    assert np.flatnonzero(top_k(v, 2)).tolist() == [1, 2]
    assert np.flatnonzero(top_k(v, 4)).tolist() == [1, 2, 3, 5]
    assert np.flatnonzero(top_k(v, 5)).tolist() == [1, 2, 3, 4, 5]
    assert np.flatnonzero(top_k(np.zeros(6), 3)).tolist() == [0, 1, 2]


def test_top_k_with_infinities() -> None:
    v = np.array([NINF, 0.5, NINF, -1e300, NINF, 7.0])
    assert np.flatnonzero(top_k(v, 3)).tolist() == [1, 3, 5]
    assert np.flatnonzero(top_k(v, 4)).tolist() == [0, 1, 3, 5]  # first -inf
    assert np.flatnonzero(top_k(np.full(4, NINF), 2)).tolist() == [0, 1]


@pytest.mark.parametrize("k", [-1, 0])
def test_top_k_nothing(k: int) -> None:
    keep = top_k(np.arange(5.0), k)
    assert keep.dtype == bool and keep.shape == (5,) and not keep.any()


@pytest.mark.parametrize("k", [5, 6, 100])
def test_top_k_everything(k: int) -> None:
    assert top_k(np.arange(5.0), k).all()


@props
@given(
    values=st.lists(
        st.sampled_from([NINF, -1e300, -3.0, 0.0, 0.5, 0.5000000000000001, 2.0]),
        min_size=1,
        max_size=60,
    ),
    data=st.data(),
)
def test_top_k_matches_stable_sort(values: list[float], data: st.DataObject) -> None:
    v = np.array(values)
    k = data.draw(st.integers(0, v.size))
    before = v.copy()
    keep = top_k(v, k)
    assert keep.dtype == bool and keep.shape == v.shape
    assert int(keep.sum()) == k
    np.testing.assert_array_equal(keep, reference_top_k(v, k))
    np.testing.assert_array_equal(v, before)  # input untouched
    np.testing.assert_array_equal(top_k(v.copy(), k), keep)  # deterministic


def test_top_k_large_random_with_ties() -> None:
    rng = np.random.default_rng(0)
    v = rng.integers(0, 50, size=20_000).astype(np.float64)
    for k in (1, 777, 10_000, 19_999):
        keep = top_k(v, k)
        assert int(keep.sum()) == k
        np.testing.assert_array_equal(keep, reference_top_k(v, k))


# ---- select_global -------------------------------------------------------------------------


def flow_scores(values: dict[str, np.ndarray], units: dict[str, float]) -> Scores:
    return Scores({n: np.asarray(v, np.float32) for n, v in values.items()}, dict(units))


def reference_select(
    names: list[str], scores: Scores, masks: dict[str, np.ndarray], k: int
) -> dict[str, np.ndarray]:
    """Sort everything: (unpruned positive > unpruned zero > pruned), log-score, position."""
    vals = np.concatenate([scores.values[n].ravel().astype(np.float64) for n in names])
    unit = np.concatenate([np.full(scores.values[n].size, scores.units[n]) for n in names])
    alive = np.concatenate([masks[n].ravel() for n in names])
    tier = np.where(alive, np.where(vals > 0, 2, 1), 0)
    with np.errstate(divide="ignore"):
        key = np.where(tier == 2, np.log(np.where(vals > 0, vals, 1.0)) + unit, 0.0)
    order = np.lexsort((np.arange(vals.size), -key, -tier))
    keep = np.zeros(vals.size, dtype=bool)
    keep[order[:k]] = True
    out, start = {}, 0
    for n in names:
        size = masks[n].size
        out[n] = keep[start : start + size].reshape(masks[n].shape)
        start += size
    return out


def random_layers(
    rng: np.random.Generator,
    shapes: list[tuple[int, ...]],
    *,
    p_pruned: float,
    p_blocked: float,
    levels: int | None = None,
    unit_range: float = 30.0,
) -> tuple[list[str], Scores, dict[str, np.ndarray]]:
    """Scores as the engine gives them: value 0 wherever the mask is False. `levels`
    quantizes the values so that many of them tie."""
    names = [f"w{i}" for i in range(len(shapes))]
    values, units, masks = {}, {}, {}
    for n, shape in zip(names, shapes, strict=True):
        v = rng.uniform(0.01, 1.0, size=shape)
        if levels is not None:
            v = np.ceil(v * levels) / levels
        v[rng.random(shape) < p_blocked] = 0.0
        masks[n] = rng.random(shape) >= p_pruned
        values[n] = np.where(masks[n], v, 0.0)
        units[n] = float(rng.uniform(-unit_range, unit_range))
    return names, flow_scores(values, units), masks


def assert_selection(
    names: list[str],
    got: dict[str, np.ndarray],
    want: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    k: int,
) -> None:
    assert sum(int(got[n].sum()) for n in names) == k
    for n in names:
        assert got[n].shape == masks[n].shape and got[n].dtype == bool
        assert not (got[n] & ~masks[n]).any(), f"{n}: re-selected a pruned weight"
        np.testing.assert_array_equal(got[n], want[n], err_msg=n)


def test_select_global_example() -> None:
    """An unpruned zero-score weight ranks below every positive one but above the pruned
    ones; ties go to the earlier layer, then the lower index."""
    names = ["a", "b"]
    masks = {"a": np.array([False, True, True]), "b": np.array([[False, True], [True, True]])}
    scores = flow_scores(
        {"a": np.array([0.0, 0.0, 1.0]), "b": np.array([[0.0, 2.0], [0.0, 1.0]])},
        {"a": 0.0, "b": 0.0},
    )
    cases = {
        1: ([False, False, False], [[False, True], [False, False]]),
        2: ([False, False, True], [[False, True], [False, False]]),  # tie 1.0/1.0: layer a
        3: ([False, False, True], [[False, True], [False, True]]),
        4: ([False, True, True], [[False, True], [False, True]]),  # then a's zero score
        5: ([False, True, True], [[False, True], [True, True]]),
    }
    for k, (a, b) in cases.items():
        got = select_global(names, scores, fresh(masks), k)
        assert got["a"].tolist() == a, k
        assert got["b"].tolist() == b, k


def test_select_global_units_decide_across_layers() -> None:
    """Layer b's values are smaller but its unit is larger: its weights rank first."""
    names = ["a", "b"]
    masks = {"a": np.ones(3, bool), "b": np.ones(3, bool)}
    scores = flow_scores(
        {"a": np.array([1.0, 0.9, 0.8]), "b": np.array([1e-3, 2e-3, 3e-3])}, {"a": 0.0, "b": 10.0}
    )
    got = select_global(names, scores, fresh(masks), 4)
    assert got["a"].tolist() == [True, False, False]
    assert got["b"].tolist() == [True, True, True]


@pytest.mark.parametrize("seed", range(8))
def test_select_global_matches_full_sort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    names, scores, masks = random_layers(
        rng,
        [(4, 3, 3, 3), (10, 4), (7,), (2, 5, 1, 1)],
        p_pruned=0.3,
        p_blocked=0.2,
        levels=8 if seed % 2 else None,
        unit_range=0.0 if seed % 4 == 1 else 30.0,
    )
    kept = sum(int(m.sum()) for m in masks.values())
    before = {n: (scores.values[n].copy(), masks[n].copy()) for n in names}
    for k in sorted({0, 1, 2, kept // 3, kept // 2, kept - 1, kept}):
        want = reference_select(names, scores, masks, k)
        for zeroed in (False, True):  # pruned weights score 0 here: both are right
            got = select_global(names, scores, fresh(masks), k, zeroed=zeroed)
            assert_selection(names, got, want, masks, k)
    for n in names:  # inputs untouched (pruned weights score 0 already)
        np.testing.assert_array_equal(scores.values[n], before[n][0])
        np.testing.assert_array_equal(masks[n], before[n][1])


@pytest.mark.parametrize("keep_above", [True, False], ids=["small", "large-model path"])
@pytest.mark.parametrize("levels", [None, 50, 3])
def test_select_global_large(
    levels: int | None, keep_above: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enough weights that the threshold is located from a sample (> 200k), with and
    without heavy ties at the threshold; on the path of models small enough to keep the
    band pass's booleans, and on the large models' path that compares again."""
    if not keep_above:
        monkeypatch.setattr(masks_module, "KEEP_ABOVE", 0)
    rng = np.random.default_rng(7)
    names, scores, masks = random_layers(
        rng,
        [(300, 1000), (64, 32, 3, 3), (60_000,)],
        p_pruned=0.4,
        p_blocked=0.05,
        levels=levels,
        unit_range=3.0,
    )
    kept = sum(int(m.sum()) for m in masks.values())
    positive = sum(int(np.count_nonzero(scores.values[n] > 0)) for n in names)
    for k in (1, 1000, kept // 10, kept // 2, positive - 1, positive, positive + 5, kept):
        want = reference_select(names, scores, masks, k)
        for zeroed in (False, True):
            got = select_global(names, scores, fresh(masks), k, zeroed=zeroed)
            assert_selection(names, got, want, masks, k)


def test_select_global_units_far_apart() -> None:
    """Units that differ by more than the float64 exponent range (e^709): ranking is by
    log-score, so it must not overflow or lose the order."""
    rng = np.random.default_rng(3)
    names = ["tiny", "mid", "huge"]
    shapes = {"tiny": (500,), "mid": (700,), "huge": (300,)}
    values = {n: rng.uniform(0.01, 1.0, size=s) for n, s in shapes.items()}
    scores = flow_scores(values, {"tiny": -2000.0, "mid": 0.0, "huge": 1500.0})
    masks = {n: np.ones(s, bool) for n, s in shapes.items()}
    for k in (100, 300, 650, 1000, 1100):
        got = select_global(names, scores, fresh(masks), k)
        assert_selection(names, got, reference_select(names, scores, masks, k), masks, k)


def test_select_global_respects_masks_whatever_the_scores() -> None:
    """`masks` says which weights are already pruned: they are never selected again, even
    when the scores given for them are positive (e.g. dense-network scores)."""
    names = ["a", "b"]
    scores = flow_scores(
        {"a": np.array([9.0, 1.0, 2.0]), "b": np.array([8.0, 3.0])}, {"a": 0.0, "b": 0.0}
    )
    masks = {"a": np.array([False, True, True]), "b": np.array([False, True])}
    for k in (1, 2, 3):
        got = select_global(names, scores, fresh(masks), k)
        assert sum(int(got[n].sum()) for n in names) == k
        for n in names:
            assert not (got[n] & ~masks[n]).any(), f"k={k}: re-selected a pruned weight of {n}"


def test_select_global_is_deterministic() -> None:
    rng = np.random.default_rng(42)
    names, scores, masks = random_layers(
        rng, [(50,), (20, 3)], p_pruned=0.1, p_blocked=0.3, levels=4
    )
    a = select_global(names, scores, fresh(masks), 60)
    copy = flow_scores({n: v.copy() for n, v in scores.values.items()}, scores.units)
    b = select_global(list(names), copy, {n: m.copy() for n, m in masks.items()}, 60)
    for n in names:
        np.testing.assert_array_equal(a[n], b[n])


# ---- local_counts / select_local -----------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "k", "caps", "want"),
    [
        ([10, 20, 30], 7, [10, 20, 30], [1, 2, 4]),  # largest remainder: 3.5 -> 4
        ([1, 1, 1], 2, [1, 1, 1], [1, 1, 0]),  # equal remainders: lower index first
        ([10, 10], 10, [1, 10], [1, 9]),  # a cap binds: the rest goes elsewhere
        ([10, 10], 15, [3, 5], [3, 5]),  # caps allow less than k: all of them
        ([5, 5], 0, [5, 5], [0, 0]),
        ([5, 7], 12, [5, 7], [5, 7]),
    ],
)
def test_local_counts_examples(sizes: list[int], k: int, caps: list[int], want: list[int]) -> None:
    assert local_counts(sizes, k, caps) == want


@props
@given(
    sizes=st.lists(st.integers(1, 500), min_size=1, max_size=8),
    data=st.data(),
)
def test_local_counts_proportional_when_caps_do_not_bind(
    sizes: list[int], data: st.DataObject
) -> None:
    total = sum(sizes)
    k = data.draw(st.integers(0, total))
    counts = local_counts(sizes, k, sizes)
    assert sum(counts) == k
    for c, s in zip(counts, sizes, strict=True):
        assert 0 <= c <= s
        assert abs(c - k * s / total) < 1, "not within rounding of k * size / total"


@props
@given(
    layers=st.lists(st.tuples(st.integers(1, 300), st.floats(0.0, 1.0)), min_size=1, max_size=8),
    data=st.data(),
)
def test_local_counts_exact_and_capped(
    layers: list[tuple[int, float]], data: st.DataObject
) -> None:
    sizes = [s for s, _ in layers]
    caps = [math.floor(s * f) for s, f in layers]
    k = data.draw(st.integers(0, sum(sizes)))
    counts = local_counts(sizes, k, caps)
    assert all(0 <= c <= cap for c, cap in zip(counts, caps, strict=True))
    assert sum(counts) == min(k, sum(caps))


def test_local_counts_redistribution_stays_proportional() -> None:
    """When a cap binds, what that layer cannot take should be shared by the others in
    proportion to their sizes (the same fraction for every uncapped layer, up to rounding),
    not handed out one weight per layer in turn."""
    sizes, caps, k = [100, 100, 1000], [0, 100, 1000], 550
    counts = local_counts(sizes, k, caps)
    assert counts[0] == 0 and sum(counts) == k
    # the 550 weights go to layers 1 and 2 in the ratio 100 : 1000
    assert abs(counts[1] - 50) < 1 and abs(counts[2] - 500) < 1, counts


def reference_select_local(
    names: list[str], scores: Scores, masks: dict[str, np.ndarray], counts: list[int]
) -> dict[str, np.ndarray]:
    return {
        n: reference_select([n], scores, masks, c)[n] for n, c in zip(names, counts, strict=True)
    }


@pytest.mark.parametrize("seed", range(6))
def test_select_local_properties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shapes = [(6, 3, 3, 3), (12, 5), (9,)]
    names, scores, masks = random_layers(
        rng, shapes, p_pruned=0.0, p_blocked=0.2, levels=6 if seed % 2 else None
    )
    sizes = [int(np.prod(s)) for s in shapes]
    # a previous local step kept the same fraction of every layer; the engine then zeroes
    # the scores of what it pruned
    masks = select_local(names, scores, masks, sum(sizes) // 2, sizes)
    scores = flow_scores({n: np.where(masks[n], scores.values[n], 0) for n in names}, scores.units)
    caps = [int(masks[n].sum()) for n in names]
    assert all(abs(c - s / 2) < 1 for c, s in zip(caps, sizes, strict=True))
    for k in (0, 1, 17, sum(caps) // 3, sum(caps) - 1, sum(caps)):
        got = select_local(names, scores, masks, k, sizes)
        counts = [int(got[n].sum()) for n in names]
        assert counts == local_counts(sizes, k, caps)
        assert all(abs(c - k * s / sum(sizes)) < 1 for c, s in zip(counts, sizes, strict=True))
        assert_selection(names, got, reference_select_local(names, scores, masks, counts), masks, k)


def test_select_local_zero_scores_rank_between() -> None:
    names = ["a"]
    scores = flow_scores({"a": np.array([0.0, 0.0, 0.0, 0.5, 0.0])}, {"a": -3.0})
    masks = {"a": np.array([False, False, True, True, True])}
    got = select_local(names, scores, masks, 2, [5])
    assert got["a"].tolist() == [False, False, True, True, False]


def test_select_global_refuses_non_finite_scores() -> None:
    rng = np.random.default_rng(0)
    names, scores, masks = random_layers(rng, [(50, 40), (30,)], p_pruned=0.0, p_blocked=0.0)
    scores.values[names[0]][...] = np.nan  # a NaN flow spreads over whole layers
    with pytest.raises(OnnxflowError, match="non-finite synaptic flow at weight"):
        select_global(names, scores, fresh(masks), 10, zeroed=True)


@pytest.mark.parametrize("kind", ["logs", "ties", "sorted_desc", "small"])
def test_kth_smallest_equals_partition(kind: str) -> None:
    """The bracketed order statistic that locates select_global's band is np.partition's,
    with heavy ties, adversarial order and sizes on both sides of the subsampling."""
    rng = np.random.default_rng(len(kind))
    n = 1000 if kind == "small" else 250_000
    x = {
        "logs": np.log(rng.random(n)),
        "ties": rng.integers(0, 7, n).astype(np.float64),
        "sorted_desc": -np.sort(rng.normal(size=n)),
        "small": rng.random(n),
    }[kind]
    for k in [0, 1, n // 3, n // 2, n - 2, n - 1, *rng.integers(0, n, 5).tolist()]:
        assert masks_module.kth_smallest(x, k) == np.partition(x, k)[k], k
