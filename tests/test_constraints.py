"""Constraints (`onnxflow.pruning.constraints`): weights reserved before ranking (`min_kept`,
protected) and the N:M pattern, on hand-built weight DAGs."""

from __future__ import annotations

import numpy as np
import pytest

from onnxflow.dag import WeightDag, WeightLayer
from onnxflow.errors import OnnxflowError
from onnxflow.pruning.constraints import NMPattern, reserved
from onnxflow.scores import Scores


def layer(name: str, shape: tuple[int, ...], in_axis: int | None) -> WeightLayer:
    return WeightLayer(name, "MatMul", [name], shape, in_axis=in_axis)


# a: 4 x 8 read along axis 1 (8 = 2 groups of 4); b: 3 x 5 (5 is no multiple of 4); c: no axis
DAG = WeightDag([layer("a", (4, 8), 1), layer("b", (3, 5), 1), layer("c", (8,), None)])


def test_reserved_is_each_layers_best_and_the_protected() -> None:
    scores = Scores(
        {"a": np.array([3, 1, 2], np.float32), "b": np.array([5, 6], np.float32)},
        {"a": 0.0, "b": 0.0},
    )
    masks = {"a": np.array([0, 1, 1], bool), "b": np.ones(2, bool)}
    first = reserved(["a", "b"], scores, masks, 1, {"b": np.array([True, False])})
    assert first["a"].tolist() == [False, False, True]  # a0 is pruned: not a candidate
    assert first["b"].tolist() == [True, True]  # b1 its best, b0 protected
    assert reserved(["a", "b"], scores, masks, 0, None) == {}
    only_protected = reserved(["a", "b"], scores, masks, 0, {"b": np.array([False, True])})
    assert only_protected["a"].tolist() == [False] * 3  # every layer has an entry


def test_pattern_layers_target_and_skipped() -> None:
    p = NMPattern((2, 4), DAG, alone=True)
    assert p.axes == {"a": 1} and p.skipped == ["b", "c"]
    assert p.allowed == 32 * 2 // 4 + 15 + 8
    assert p.target(None, DAG.size) == p.allowed
    assert p.target(0.5, DAG.size) == round(0.5 * DAG.size)
    with pytest.raises(OnnxflowError, match="contradicts"):
        p.target(0.1, DAG.size)
    with pytest.raises(OnnxflowError, match="keeps no weight"):
        p.target(0.999, DAG.size)


def test_pattern_that_fits_no_layer_is_refused() -> None:
    with pytest.raises(OnnxflowError, match="fits no layer"):
        NMPattern((2, 4), WeightDag([layer("b", (3, 5), 1)]), alone=True)


def test_pattern_tightens_from_m_to_n_over_the_schedule() -> None:
    p = NMPattern((1, 4), DAG, alone=True)
    assert [p.per_group(s, 3) for s in range(3)] == [3, 2, 1]
    assert [p.per_group(s, 1) for s in range(1)] == [1]


def test_pattern_keeps_each_groups_best_and_leaves_skipped_layers() -> None:
    p = NMPattern((2, 4), DAG, alone=False)
    rng = np.random.default_rng(0)
    shapes = {"a": (4, 8), "b": (3, 5), "c": (8,)}
    values = {n: rng.random(s).astype(np.float32) for n, s in shapes.items()}
    scores = Scores(values, dict.fromkeys(values, 0.0))
    masks = {n: np.ones(v.shape, bool) for n, v in values.items()}
    out, k = p.apply(scores, masks, 2, 20)
    assert k == 20  # a sparsity sets k; the pattern only restricts
    assert out["b"] is masks["b"] and out["c"] is masks["c"]
    for row in range(4):
        for g in range(2):
            group = values["a"][row, 4 * g : 4 * g + 4]
            kept = out["a"][row, 4 * g : 4 * g + 4]
            assert kept.sum() == 2 and set(np.flatnonzero(kept)) == set(np.argsort(-group)[:2])
    alone, k_alone = NMPattern((2, 4), DAG, alone=True).apply(scores, masks, 2, 20)
    assert k_alone == sum(int(m.sum()) for m in alone.values()) == 16 + 15 + 8
