"""The selector (`onnxflow.pruning.selector.Selector`): scores and a count k to masks,
globally or per layer, with `min_kept` and protected weights kept first."""

from __future__ import annotations

import numpy as np
import pytest

from onnxflow.pruning.selector import Selector
from onnxflow.scores import Scores


def scores_of(values: dict[str, list[float]], units: dict[str, float] | None = None) -> Scores:
    vals = {n: np.asarray(v, np.float32) for n, v in values.items()}
    return Scores(vals, dict(units or dict.fromkeys(vals, 0.0)))


def ones(scores: Scores) -> dict[str, np.ndarray]:
    return {n: np.ones(v.shape, bool) for n, v in scores.values.items()}


def reference(scores: Scores, masks: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Full sort of (unpruned first, log-score, earlier position) over all layers."""
    logs = scores.log()
    rows = [
        (not masks[n].flat[i], -logs[n].flat[i], li, i)
        for li, n in enumerate(scores.values)
        for i in range(scores.values[n].size)
    ]
    out = {n: np.zeros(m.shape, bool) for n, m in masks.items()}
    names = list(scores.values)
    for _, _, li, i in sorted(rows)[:k]:
        out[names[li]].flat[i] = True
    return {n: out[n] & masks[n] for n in names}


def test_global_is_a_full_sort_across_layers_with_units() -> None:
    rng = np.random.default_rng(0)
    values = {"a": rng.random(12).tolist(), "b": rng.random(7).tolist()}
    scores = scores_of(values, {"a": 0.0, "b": 1.0})  # b's scores are e times larger
    select = Selector(["a", "b"], [12, 7])
    for k in (0, 1, 5, 9, 19):
        got = select(scores, ones(scores), k)
        want = reference(scores, ones(scores), k)
        assert all(np.array_equal(got[n], want[n]) for n in want), k


def test_global_ties_go_to_the_earlier_layer_and_index() -> None:
    scores = scores_of({"a": [1, 2, 1], "b": [1, 2]})
    got = Selector(["a", "b"], [3, 2])(scores, ones(scores), 3)
    assert got["a"].tolist() == [True, True, False] and got["b"].tolist() == [False, True]


def test_exact_zeros_skips_zeroing_with_the_same_result() -> None:
    """Scores already 0 where the masks prune (the engine's) select the same either way."""
    scores = scores_of({"a": [3, 0, 2, 5], "b": [0, 4, 1]})
    masks = {"a": np.array([1, 0, 1, 1], bool), "b": np.array([0, 1, 1], bool)}
    select = Selector(["a", "b"], [4, 3])
    a = select(scores, {n: m.copy() for n, m in masks.items()}, 3, exact_zeros=True)
    b = select(scores, {n: m.copy() for n, m in masks.items()}, 3, exact_zeros=False)
    assert {n: m.tolist() for n, m in a.items()} == {n: m.tolist() for n, m in b.items()}
    assert a["a"].tolist() == [True, False, False, True] and a["b"].tolist() == [False, True, False]


def test_pruned_weights_are_never_selected_again() -> None:
    scores = scores_of({"a": [9, 8, 7], "b": [6, 5]})
    masks = {"a": np.array([0, 1, 1], bool), "b": np.array([1, 0], bool)}
    got = Selector(["a", "b"], [3, 2])(scores, masks, 5)  # k above what is left
    assert got["a"].tolist() == [False, True, True] and got["b"].tolist() == [True, False]


def test_local_keeps_each_layers_share() -> None:
    scores = scores_of({"a": [1, 2, 3, 4, 5, 6, 7, 8], "b": [100, 1, 50, 2]})
    got = Selector(["a", "b"], [8, 4], "local")(scores, ones(scores), 6)
    assert got["a"].tolist() == [False] * 4 + [True] * 4  # 8/12 of 6: its best 4
    assert got["b"].tolist() == [True, False, True, False]


@pytest.mark.parametrize("scope", ["global", "local"])
def test_min_kept_keeps_each_layers_best_first(scope: str) -> None:
    """`b` scores far below `a`: without min_kept a global k = 3 takes only `a`."""
    scores = scores_of({"a": [10, 20, 30, 40], "b": [1e-3, 2e-3, 5e-4]})
    select = Selector(["a", "b"], [4, 3], scope, min_kept=1)
    got = select(scores, ones(scores), 3)
    assert got["b"].tolist() == [False, True, False]  # b's best
    assert int(sum(m.sum() for m in got.values())) == 3  # the reserved weight counts in k
    if scope == "global":
        assert got["a"].tolist() == [False, False, True, True]
        assert Selector(["a", "b"], [4, 3])(scores, ones(scores), 3)["b"].sum() == 0


def test_min_kept_beyond_k_keeps_more_than_k() -> None:
    scores = scores_of({"a": [1, 2, 3], "b": [4, 5, 6]})
    got = Selector(["a", "b"], [3, 3], min_kept=2)(scores, ones(scores), 1)
    assert got["a"].tolist() == [False, True, True] and got["b"].tolist() == [False, True, True]


def test_protected_weights_are_kept_and_count_in_k() -> None:
    scores = scores_of({"a": [5, 6, 7], "b": [0.1, 0.2]})
    protect = {"b": np.array([True, False])}
    got = Selector(["a", "b"], [3, 2])(scores, ones(scores), 3, protect, exact_zeros=True)
    assert got["b"].tolist() == [True, False]
    assert got["a"].tolist() == [False, True, True]
    # Their scores (a scorer's buffer, used once) are zeroed: they left the ranking.
    assert scores.values["b"].tolist() == [0.0, pytest.approx(0.2)]
