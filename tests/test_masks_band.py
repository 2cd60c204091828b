"""The band machinery of exact global top-k (`onnxflow.masks.select_global`): float32 band
edges that split the float64 log-scores exactly, selection into a second set of mask
buffers, and the edge cases of the band (ties at its edges, zeros, per-channel units,
k = 0 or all, a layer emptied). The reference is a full sort (test_masks.reference_select).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_masks import assert_selection, flow_scores, fresh, random_layers, reference_select

import onnxflow.masks as masks_module
from onnxflow.masks import exact_thresholds, kth_smallest, select_global, top_k
from onnxflow.scores import Scores

F32 = np.float32


def key(v: np.ndarray, u: float) -> np.ndarray:
    """The key selection ranks by: float64 log of the float32 value plus the unit."""
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(v, F32), dtype=np.float64) + u


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3, 1e6])
def test_exact_thresholds_split_the_keys_exactly(scale: float) -> None:
    """v > t exactly where key(v) > bound, checked on t and its float32 neighbours (where
    a rounded exp(bound - u) would be off by one), for units small and huge."""
    rng = np.random.default_rng(int(scale))
    units = rng.uniform(-scale, scale, 200)
    bounds = units + rng.uniform(-60, 60, 200)  # within float32's range of v
    t = exact_thresholds(bounds, units)
    assert t.dtype == F32 and t.shape == units.shape
    for ti, b, u in zip(t, bounds, units, strict=True):
        around = [ti]
        for _ in range(4):
            around += [np.nextafter(around[-1], F32(np.inf)), np.nextafter(around[0], F32(0))]
        v = np.array(around, F32)
        np.testing.assert_array_equal(v > ti, key(v, u) > b)
        assert key(ti, u) <= b < key(np.nextafter(ti, F32(np.inf)), u)


def test_exact_thresholds_at_the_ends_of_float32() -> None:
    u = np.array([0.0, 0.0, 0.0, -np.inf, 5.0])
    b = np.array([np.inf, -np.inf, 1e3, 0.0, -500.0])
    t = exact_thresholds(b, u)
    assert t[0] == np.inf  # nothing is above +inf
    assert t[1] == 0  # every positive score is above -inf
    assert t[2] == np.finfo(F32).max  # only an infinite score is above e^1000
    assert t[3] == np.inf  # a channel no flow reaches: never above any bound
    assert t[4] == 0  # e^-505 is below float32's smallest value: every positive is above
    assert exact_thresholds(-np.inf, np.array([-np.inf, 1.0])).tolist() == [np.inf, 0.0]


@pytest.mark.parametrize("levels", [None, 40, 2])
def test_selection_into_out_buffers(levels: int | None) -> None:
    """With `out`, the masks land in the given buffers and the masks and scores passed in
    stay as they were (a refiner undoes a step for free); the result is the full sort's,
    for k from 0 to every unpruned weight, with ties (`levels`) and blocked weights."""
    rng = np.random.default_rng(11)
    names, scores, masks = random_layers(
        rng,
        [(200, 300), (7,), (64, 16, 3, 3), (90_000,)],
        p_pruned=0.5,
        p_blocked=0.05,
        levels=levels,
        unit_range=4.0,
    )
    assert sum(m.size for m in masks.values()) > masks_module._SAMPLE  # the sampled path
    kept = sum(int(m.sum()) for m in masks.values())
    positive = sum(int(np.count_nonzero(scores.values[n])) for n in names)
    before = {n: (scores.values[n].copy(), masks[n].copy()) for n in names}
    out = {n: np.empty(m.shape, bool) for n, m in masks.items()}
    for k in (0, 1, 999, kept // 3, positive - 1, positive, positive + 3, kept, kept + 10):
        got = select_global(names, scores, masks, k, zeroed=True, out=out)
        want = reference_select(names, scores, masks, min(k, kept))
        assert_selection(names, got, want, masks, min(k, kept))
        for n in names:
            assert np.shares_memory(got[n], out[n])
            np.testing.assert_array_equal(scores.values[n], before[n][0])
            np.testing.assert_array_equal(masks[n], before[n][1])


def test_ties_at_the_band_edge_go_to_the_earlier_position() -> None:
    """Every score ties (one value in two layers of one unit) or sits just above the tie:
    the band's edges land on the tied value, and the k kept are the higher scores, then
    the tied ones in network order."""
    names = ["a", "b"]
    a = np.full(70_000, 0.25)
    b = np.full(60_000, 0.25)
    a[::1000] = 0.5
    scores = flow_scores({"a": a, "b": b}, {"a": 0.0, "b": 0.0})
    masks = {"a": np.ones(a.shape, bool), "b": np.ones(b.shape, bool)}
    for k in (1, 70, 71, 5_000, 70_000, 70_001, 100_000, 130_000):
        for out in (None, {n: np.empty(m.shape, bool) for n, m in masks.items()}):
            got = select_global(names, scores, fresh(masks), k, zeroed=True, out=out)
            assert_selection(names, got, reference_select(names, scores, masks, k), masks, k)


def test_units_per_channel_on_the_sampled_path() -> None:
    """A layer with a unit per input channel (one of them -inf: no flow reaches it) beside
    a one-unit layer, large enough to be sampled: the k best by float64 log-score."""
    rng = np.random.default_rng(5)
    va = rng.uniform(0.01, 1.0, (300, 200)).astype(F32)
    vb = rng.uniform(0.01, 1.0, (20, 8, 25, 25)).astype(F32)
    vb[rng.random(vb.shape) < 0.1] = 0.0  # blocked
    ub = rng.uniform(-40.0, 40.0, (1, 8, 1, 1))
    ub[0, 3] = -np.inf
    scores = Scores({"a": va, "b": vb}, {"a": 1.5, "b": ub})
    masks = {"a": rng.random(va.shape) < 0.8, "b": rng.random(vb.shape) < 0.8}
    scores.values["a"] *= masks["a"]
    scores.values["b"] *= masks["b"]
    logs = scores.log()
    flat = np.concatenate([np.where(masks[n], logs[n], -np.inf).ravel() for n in ("a", "b")])
    reachable = int(np.count_nonzero(flat > -np.inf))
    for k in (1, 500, 20_000, reachable // 2, reachable):
        out = {n: np.empty(m.shape, bool) for n, m in masks.items()}
        got = select_global(["a", "b"], scores, masks, k, zeroed=True, out=out)
        order = np.argsort(-flat, kind="stable")[:k]
        want = np.zeros(flat.size, bool)
        want[order] = True
        np.testing.assert_array_equal(np.concatenate([got["a"].ravel(), got["b"].ravel()]), want)


def test_a_layer_whose_scores_are_lowest_is_emptied() -> None:
    names = ["low", "high"]
    rng = np.random.default_rng(2)
    values = {"low": rng.uniform(0.1, 0.2, 40_000), "high": rng.uniform(0.5, 1.0, 50_000)}
    scores = flow_scores(values, {"low": 0.0, "high": 0.0})
    masks = {n: np.ones(v.shape, bool) for n, v in values.items()}
    for out in (None, {n: np.empty(m.shape, bool) for n, m in masks.items()}):
        got = select_global(names, scores, fresh(masks), 50_000, zeroed=True, out=out)
        assert not got["low"].any() and got["high"].all()


def test_in_place_and_into_out_agree_on_the_large_model_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above KEEP_ABOVE weights selection writes over the masks (no second set); the
    result is the same as into separate buffers."""
    rng = np.random.default_rng(9)
    names, scores, masks = random_layers(
        rng, [(400, 250), (50_000,)], p_pruned=0.3, p_blocked=0.1, levels=30
    )
    out = {n: np.empty(m.shape, bool) for n, m in masks.items()}
    kept = sum(int(m.sum()) for m in masks.values())
    monkeypatch.setattr(masks_module, "KEEP_ABOVE", 0)
    for k in (10, kept // 2, kept - 1):
        a = select_global(names, scores, fresh(masks), k, zeroed=True)
        b = select_global(names, scores, masks, k, zeroed=True, out=out)
        for n in names:
            np.testing.assert_array_equal(a[n], b[n])


def test_top_k_on_many_values_with_infinities_and_ties() -> None:
    """top_k's threshold comes from kth_smallest's bracket above 32k values."""
    rng = np.random.default_rng(4)
    v = rng.integers(0, 300, 100_000).astype(np.float64)
    v[rng.random(v.size) < 0.2] = -np.inf
    for k in (1, 5_000, 50_000, 79_000, 90_000, 99_999):
        keep = top_k(v, k)
        order = np.lexsort((np.arange(v.size), -v))[:k]
        want = np.zeros(v.size, bool)
        want[order] = True
        np.testing.assert_array_equal(keep, want)


@pytest.mark.parametrize("n", [4097, 9_000, 30_000, 120_000])
def test_kth_smallest_with_infinities(n: int) -> None:
    """Sizes on both sides of the subsample's step of 8, with -inf (pruned weights ranked
    last) and +inf."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    x[rng.random(n) < 0.3] = -np.inf
    x[:50] = np.inf
    for k in (0, 1, n // 3, n * 3 // 10, n // 2, n - 50, n - 1):
        assert kth_smallest(x, k) == np.partition(x, k)[k], k


@pytest.mark.parametrize("total", [1_000, 65_536, 1_000_000, 3_469_760, 5_236_192, 25_557_032])
def test_the_sample_step_is_prime(total: int) -> None:
    """A step sharing a factor with layer widths (products of 2, 3, 5) would sample only
    some input channels, and SynFlow prunes whole channels; the sample size stays between
    about 2^16 (or everything) and 2^19."""
    step = masks_module._sample_step(total)
    assert step == 1 or all(step % d for d in range(2, step))
    assert min(total, masks_module._SAMPLE // 2) <= -(-total // step) <= 1 << 19


@pytest.mark.parametrize("out", [False, True])
def test_the_band_pass_on_every_core_gives_the_serial_masks(
    monkeypatch: pytest.MonkeyPatch, out: bool
) -> None:
    """The band pass split into runs of pieces, one per core (`parallel.runs`), forced on
    small layers cut into many pieces: ties on the band's edges inside and across layers
    (and across the cut between runs), blocked scores, pruned weights and a layer with a
    unit per channel give exactly the serial pass's masks, which are the full sort's."""
    monkeypatch.setattr(masks_module, "_CHUNK", 1 << 12)
    rng = np.random.default_rng(12)
    shapes = {"a": (300, 200), "b": (20, 8, 25, 25), "c": (50_000,), "d": (7, 9)}
    values = {n: rng.choice([0.25, 0.5, 1.0], s).astype(F32) for n, s in shapes.items()}
    values["a"][rng.random(shapes["a"]) < 0.5] = rng.uniform(0.1, 2.0)  # ties, one value
    values["c"][rng.random(50_000) < 0.1] = 0.0  # blocked
    ub = rng.uniform(-3.0, 3.0, (1, 8, 1, 1))
    scores = Scores(values, {"a": 0.0, "b": ub, "c": 0.0, "d": 1.0})
    masks = {n: rng.random(s) < 0.9 for n, s in shapes.items()}
    for n in shapes:
        scores.values[n] *= masks[n]
    names = list(shapes)
    total = sum(v.size for v in values.values())
    logs = scores.log()
    flat = np.concatenate([np.where(masks[n], logs[n], -np.inf).ravel() for n in names])
    reachable = int(np.count_nonzero(flat > -np.inf))
    for k in (1, 999, 40_000, reachable // 2, reachable):
        got = {}
        for above in (0, total + 1):  # on every core, then serial
            monkeypatch.setattr(masks_module, "_PARALLEL_ABOVE", above)
            buffers = {n: np.empty(s, bool) for n, s in shapes.items()} if out else None
            got[above] = select_global(names, scores, fresh(masks), k, zeroed=True, out=buffers)
        for n in names:
            np.testing.assert_array_equal(got[0][n], got[total + 1][n])
        want = np.zeros(flat.size, bool)
        want[np.argsort(-flat, kind="stable")[:k]] = True
        np.testing.assert_array_equal(np.concatenate([got[0][n].ravel() for n in names]), want)
