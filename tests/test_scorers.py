"""Scorers (`onnxflow.pruning.scorers`): SynFlow through the flow engine, |W| and seeded
random, each 0 exactly where the masks prune."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxflow
import onnxflow.flow.engine as engine_module
from onnxflow import parallel
from onnxflow.analyze import analyze
from onnxflow.flow.engine import FlowEngine
from onnxflow.pruning.scorers import FixedScorer, SynFlowScorer, magnitude_scorer, random_scorer

W0 = np.array([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0]], np.float32)  # 2 -> 3
W1 = np.array([[2.0], [-1.0], [4.0]], np.float32)  # 3 -> 1


def chain(w0: np.ndarray = W0, w1: np.ndarray = W1) -> onnx.ModelProto:
    """x (1 x 2, or w0's rows) -> MatMul W0 -> Relu -> MatMul W1 -> y."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w0"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w1"], ["y"]),
        ],
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w0.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w1.shape[1]])],
        [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def engine_of(model: onnx.ModelProto) -> FlowEngine:
    analysis = analyze(model)
    return FlowEngine(analysis.graph, analysis.dag, "cpu")


def test_synflow_scores_are_the_flow_through_each_weight() -> None:
    """On ones, a path's flow is the product of its |w|: w0[i, j]'s score is
    |w0[i, j]| * |w1[j]|, w1[j]'s is (sum_i |w0[i, j]|) * |w1[j]|; they sum to R per layer."""
    engine = engine_of(chain())
    scorer = SynFlowScorer(engine, engine.run(check=True), check=True)
    masks = {"w0": np.ones((2, 3), bool), "w1": np.ones((3, 1), bool)}
    s = scorer(masks)
    logs = s.log()
    a0, a1 = np.abs(W0), np.abs(W1)
    np.testing.assert_allclose(np.exp(logs["w0"]), a0 * a1.T, rtol=1e-6)
    np.testing.assert_allclose(np.exp(logs["w1"]), a0.sum(0)[:, None] * a1, rtol=1e-6)
    assert s.log_flow == pytest.approx(np.log((a0.sum(0) * a1[:, 0]).sum()))
    assert scorer(masks) is s  # scored once per set of masks


def test_synflow_rescores_the_masked_network_after_prune() -> None:
    engine = engine_of(chain())
    scorer = SynFlowScorer(engine, engine.run(check=True), check=True)
    masks = {"w0": np.array([[1, 0, 1], [0, 1, 1]], bool), "w1": np.array([[1], [1], [0]], bool)}
    scorer.prune(masks)
    s = scorer(masks)
    for n, m in masks.items():
        assert (s.values[n][~m] == 0).all(), n  # 0 exactly where pruned
    # The same as the dense scores of the model with those weights set to zero.
    pruned = onnxflow.score(chain(W0 * masks["w0"], W1 * masks["w1"]))
    for n, log in s.log().items():
        np.testing.assert_allclose(log, pruned.log_scores[n], rtol=1e-6)
    assert s.log_flow == pytest.approx(pruned.log_flow)


def wide_chain(seed: int) -> onnx.ModelProto:
    """`chain` with a 64 x 300 first layer (19,200 weights: one piece of `prune`)."""
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=(64, 300)).astype(np.float32)
    w1 = rng.normal(size=(300, 1)).astype(np.float32)
    return chain(w0, w1)


@pytest.mark.parametrize("lost", [0, 1, 200, 19_200], ids=["none", "one", "few", "all"])
def test_prune_given_the_masks_before_zeroes_what_they_lost(lost: int) -> None:
    """Told the masks of its last prune, the engine zeroes just what the new masks lost;
    its weights, and so its scores, are those of a prune without them."""
    rng = np.random.default_rng(lost)
    model = wide_chain(lost)
    first = {"w0": rng.random((64, 300)) < 0.9, "w1": rng.random((300, 1)) < 0.9}
    then = {n: m.copy() for n, m in first.items()}
    flat = then["w0"].reshape(-1)
    flat[rng.choice(np.flatnonzero(flat), min(lost, int(flat.sum())), replace=False)] = False
    told, plain = engine_of(model), engine_of(model)
    for engine in (told, plain):
        engine.prune(first)
    told.prune(then, first)
    plain.prune(then)
    for n in ("w0", "w1"):
        np.testing.assert_array_equal(told.weights[n], plain.weights[n])
        assert (told.weights[n][~then[n]] == 0).all() and (told.weights[n][then[n]] != 0).all()


def test_synflow_restore_undoes_a_prune() -> None:
    engine = engine_of(chain())
    dense = engine.run(check=True)
    dense_logs = dense.log()
    scorer = SynFlowScorer(engine, dense, check=False)
    ones = {"w0": np.ones((2, 3), bool), "w1": np.ones((3, 1), bool)}
    scorer.prune({"w0": np.zeros((2, 3), bool), "w1": ones["w1"]})
    assert scorer(ones).log_flow == -np.inf
    scorer.restore(ones, ["w0"])
    restored = scorer(ones)
    for n, log in restored.log().items():
        np.testing.assert_array_equal(log, dense_logs[n])


def test_magnitude_is_abs_w_times_the_masks() -> None:
    scorer = magnitude_scorer({"w0": np.abs(W0), "w1": np.abs(W1)})
    masks = {"w0": np.array([[1, 0, 1], [1, 1, 0]], bool), "w1": np.ones((3, 1), bool)}
    s = scorer(masks)
    np.testing.assert_array_equal(s.values["w0"], np.abs(W0) * masks["w0"])
    np.testing.assert_array_equal(s.values["w1"], np.abs(W1))
    assert s.units == {"w0": 0.0, "w1": 0.0}
    assert not hasattr(s, "log_flow")  # a baseline has no R to report
    again = scorer({n: np.ones_like(m) for n, m in masks.items()})
    assert again is s and (again.values["w0"] == np.abs(W0)).all()  # buffers, rewritten


def test_random_is_seeded_uniform_drawn_in_layer_order() -> None:
    shapes = {"w0": (2, 3), "w1": (3, 1)}
    masks = {n: np.ones(s, bool) for n, s in shapes.items()}
    a = random_scorer(shapes, 7)(masks)
    rng = np.random.default_rng(7)
    for n, shape in shapes.items():
        want = rng.random(shape, dtype=np.float32) + np.float32(1e-6)
        np.testing.assert_array_equal(a.values[n], want)
        assert (a.values[n] > 0).all()
    b = random_scorer(shapes, 8)(masks)
    assert not np.array_equal(a.values["w0"], b.values["w0"])


def test_fixed_scorer_ignores_prune() -> None:
    scorer = FixedScorer({"a": np.array([1.0, 2.0], np.float32)})
    scorer.prune({"a": np.array([False, True])})
    assert scorer({"a": np.array([True, True])}).values["a"].tolist() == [1.0, 2.0]


@pytest.mark.parametrize("piece", [1_000, 1 << 18], ids=["many-pieces", "one-piece"])
def test_prune_in_pieces_is_the_plain_multiply_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    """`prune` multiplies by the masks through a float32 scratch, piece by piece (a last
    piece shorter than the others included): the weights are those of `w * mask` with
    numpy's own cast of the booleans, to the bit, over two prunes in a row, the pieces
    split between the cores."""
    monkeypatch.setattr(engine_module, "_PIECE", piece)
    # on every core however small (`runs` is serial below a million weights by default)
    monkeypatch.setattr(engine_module, "runs", functools.partial(parallel.runs, least=0))
    rng = np.random.default_rng(7)
    engine = engine_of(wide_chain(7))
    want = {n: w.copy() for n, w in engine.weights.items()}
    for density in (0.7, 0.3):
        masks = {n: rng.random(w.shape) < density for n, w in want.items()}
        engine.prune(masks)
        for n, w in want.items():
            np.multiply(w, masks[n], out=w)
            assert engine.weights[n].dtype == w.dtype
            np.testing.assert_array_equal(engine.weights[n].view(np.uint32), w.view(np.uint32))
            assert (engine.weights[n][~masks[n]] == 0).all()
