"""Group scores: a group's SynFlow score is the sum of its readers' in-slice scores, and in a
chain the groups of one layer carry the whole flow R (conservation), without autograd."""

from __future__ import annotations

import channel_nets as nets
import numpy as np
import pytest

import onnxflow
from onnxflow.channels.api import analyse, score_function
from onnxflow.channels.groups import IN
from onnxflow.channels.score import Budget, select_groups, units
from onnxflow.errors import OnnxflowError
from onnxflow.options import PruneOptions


@pytest.mark.parametrize("name", ["conv_chain", "basic_residual", "flatten_reshape_gemm"])
def test_group_score_is_sum_of_readers_in_slice_scores(name: str) -> None:
    model = nets.ALL[name]()
    a = analyse(model, PruneOptions(sparsity=0.5))
    got = score_function(a, "synflow", 0, "cpu")(set())
    per_weight = onnxflow.score(model).log_scores
    checked = 0
    for g in a.groups.groups:
        terms = []
        for s in g.slices:
            if s.kind == IN and s.weight:
                part = np.take(np.exp(per_weight[s.tensor]), s.index, axis=s.axis)
                terms.append(part.sum())
        if terms:
            np.testing.assert_allclose(got[g.id], np.log(sum(terms)), rtol=1e-5)
            checked += 1
        else:
            assert got[g.id] == -np.inf
    assert checked >= 8


def test_conservation_in_a_chain() -> None:
    """Each layer's groups together carry R: the flow through a layer's channels."""
    model = nets.conv_chain()
    a = analyse(model, PruneOptions(sparsity=0.5))
    scores = score_function(a, "synflow", 0, "cpu")(set())
    log_r = onnxflow.score(model).log_flow
    convs = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    for w in convs:
        gids = np.unique(a.groups.claims[(w, 0)])
        np.testing.assert_allclose(np.logaddexp.reduce(scores[gids]), log_r, rtol=1e-5)


def test_removed_groups_score_zero_after_rescoring() -> None:
    model = nets.conv_chain()
    a = analyse(model, PruneOptions(sparsity=0.5))
    score = score_function(a, "synflow", 0, "cpu")
    dense = score(set()).copy()
    lowest = int(np.argmin(np.where(np.isfinite(dense), dense, np.inf)))
    after = score({lowest})
    assert after[lowest] == -np.inf
    assert np.isfinite(dense[lowest])


def test_target_is_reached_with_at_most_one_group_beyond() -> None:
    model = nets.bottleneck_projection()
    a = analyse(model, PruneOptions(sparsity=0.4))
    cg = a.groups
    sel = select_groups(cg, score_function(a, "synflow", 0, "cpu"), 0.4, 10, "exponential")
    total = sel.budget.total
    removed = total - sel.budget.kept
    assert removed >= 0.4 * total
    assert removed - sel.budget.last < 0.4 * total  # without the last group: short of it
    # the budget agrees with the masks
    masks = cg.masks(sel.removed)
    unclaimed = a.dag.size - total
    assert sum(int(m.sum()) for m in masks.values()) - unclaimed == sel.budget.kept


def test_each_layer_keeps_a_channel() -> None:
    model = nets.conv_chain()
    result = onnxflow.prune(model, granularity="channel", sparsity=0.9, iterations=5)
    for axes in result.kept.values():
        assert all(len(idx) >= 1 for idx in axes.values())


def test_unreachable_sparsity_names_the_maximum() -> None:
    with pytest.raises(OnnxflowError, match=r"at most 0\.\d+ of the"):
        onnxflow.prune(nets.conv_chain(), granularity="channel", sparsity=0.999)


def test_magnitude_and_random_methods() -> None:
    model = nets.conv_chain()
    a = analyse(model, PruneOptions(sparsity=0.5))
    mag = score_function(a, "magnitude", 0, "cpu")(set())
    w1 = next(n.input[1] for n in model.graph.node if n.op_type == "Conv")
    w2 = [n.input[1] for n in model.graph.node if n.op_type == "Conv"][1]
    tensors = {t.name: onnx_array(model, t.name) for t in model.graph.initializer}
    gids = a.groups.claims[(w1, 0)]
    expected = np.abs(tensors[w1]).sum(axis=(1, 2, 3)) + np.abs(tensors[w2]).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(np.exp(mag[gids]), expected, rtol=1e-5)
    r1 = score_function(a, "random", 3, "cpu")(set())
    r2 = score_function(a, "random", 3, "cpu")(set())
    r3 = score_function(a, "random", 4, "cpu")(set())
    assert np.array_equal(r1, r2) and not np.array_equal(r1, r3)


def onnx_array(model: object, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))  # type: ignore[attr-defined]


def test_bundles_keep_multiples() -> None:
    a = analyse(nets.conv_chain(), PruneOptions(sparsity=0.5))
    cg = a.groups
    scores = np.arange(max(g.id for g in cg.groups) + 1, dtype=float)
    bundles = units(cg, scores, set(), 4)
    assert all(len(b) in (4, 2) for b in bundles)  # 8 -> 4s; 6 -> 2 first, then 4
    budget = Budget(cg)
    assert budget.can_remove(bundles[0])


def test_flow_per_weight_ranking_divides_by_group_size() -> None:
    """Ranking by flow per weight removes differently sized groups in another order; both
    reach the target."""
    model = nets.bottleneck_projection()
    a = analyse(model, PruneOptions(sparsity=0.5))
    score = score_function(a, "synflow", 0, "cpu")
    by_flow = select_groups(a.groups, score, 0.5, 1, "exponential")
    a = analyse(model, PruneOptions(sparsity=0.5))
    score = score_function(a, "synflow", 0, "cpu")
    per_weight = select_groups(a.groups, score, 0.5, 1, "exponential", ranking="flow-per-weight")
    assert by_flow.removed != per_weight.removed
    for sel in (by_flow, per_weight):
        assert sel.budget.total - sel.budget.kept >= 0.5 * sel.budget.total
    a = analyse(model, PruneOptions(sparsity=0.5))
    score = score_function(a, "synflow", 0, "cpu")
    per_flop = select_groups(
        a.groups, score, 0.5, 1, "exponential", ranking="flow-per-flop",
        uses={layer.name: layer.uses for layer in a.dag.layers},
    )  # fmt: skip
    assert per_flop.removed != by_flow.removed
    with pytest.raises(OnnxflowError, match="ranking must be"):
        select_groups(a.groups, score, 0.5, 1, "exponential", ranking="size")
