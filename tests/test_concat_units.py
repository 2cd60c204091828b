"""Scale safety at joins: per-channel log-units after Concat, and dead flows at sums.

Flows that meet at a Concat can differ by more than float32 spans (an early DenseNet feature
beside a late one: 130+ nats). In one float32 tensor the smaller part underflows and weights
reading it would score exactly 0 though their score is positive. These networks are built so
that the gap is 200+ nats, and scored against float64 references written here in numpy.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxflow
from onnxflow.flow.engine import FlowScores
from onnxflow.masks import rank_keys, reserve, restrict_to_pattern, select_global, select_local

LOG_F32_SPAN = float(np.log(np.finfo(np.float32).max) - np.log(np.finfo(np.float32).tiny))


def _model(nodes: list, inits: dict[str, np.ndarray], x_shape: list[int], y_shape: list[int]):
    graph = helper.make_graph(
        nodes,
        "joins",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _gap_weights(seed: int = 0, depth: int = 8, d: int = 6) -> dict[str, np.ndarray]:
    """(out, in) matrices: a deep branch A growing ~e^24 per layer, a shallow tiny branch B,
    a depthwise scale on the concatenation and two layers after it."""
    rng = np.random.default_rng(seed)
    w = {"a0": rng.uniform(0.5, 1.0, (d, 4)) * 1e10}
    for i in range(1, depth):
        w[f"a{i}"] = rng.uniform(0.5, 1.0, (d, d)) * 1e10
    w["b"] = rng.uniform(0.5, 1.0, (3, 4)) * 1e-10
    w["dw"] = rng.uniform(0.5, 2.0, (d + 3,))
    w["f"] = rng.uniform(0.5, 1.0, (5, d + 3))
    w["g"] = rng.uniform(0.5, 1.0, (2, 5))
    return w


def _reference(w: dict[str, np.ndarray], depth: int) -> tuple[dict[str, np.ndarray], float]:
    """Float64 log-scores of the network of `_gap_weights` on a ones input, by hand:
    score of M[o, i] = b[o] * M[o, i] * f[i] with f the forward and b the backward flow."""
    f = {"a0": np.ones(4), "b": np.ones(4)}
    for i in range(1, depth):
        f[f"a{i}"] = w[f"a{i - 1}"] @ f[f"a{i - 1}"]
    z = np.concatenate([w[f"a{depth - 1}"] @ f[f"a{depth - 1}"], w["b"] @ f["b"]])
    f["dw"] = z
    f["f"] = w["dw"] * z
    f["g"] = w["f"] @ f["f"]
    r = float((w["g"] @ f["g"]).sum())
    b = {"g": np.ones(2)}
    b["f"] = w["g"].T @ b["g"]
    b["dw"] = w["f"].T @ b["f"]
    bz = w["dw"] * b["dw"]
    d = w["a0"].shape[0]
    b[f"a{depth - 1}"], b["b"] = bz[:d], bz[d:]
    for i in range(depth - 1, 0, -1):
        b[f"a{i - 1}"] = w[f"a{i}"].T @ b[f"a{i}"]
    scores = {}
    for name, m in w.items():
        s = b[name] * m * f[name] if m.ndim == 1 else b[name][:, None] * m * f[name][None, :]
        scores[name] = np.log(s)
    return scores, float(np.log(r))


def _chain_nodes(depth: int, op: str) -> list:
    nodes = [helper.make_node(op, ["x", "a0"], ["t0"])]
    for i in range(1, depth):
        nodes.append(helper.make_node(op, [f"t{i - 1}", f"a{i}"], [f"t{i}"]))
    return [*nodes, helper.make_node(op, ["x", "b"], ["u"])]


def mlp_with_gap(depth: int = 8) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """MatMul version: x (1, 4) -> [A chain | B] -> Concat -> * dw -> Relu -> f -> g -> y."""
    w = _gap_weights(depth=depth)
    inits = {k: v.T for k, v in w.items() if k != "dw"} | {"dw": w["dw"][None, :]}
    nodes = [
        *_chain_nodes(depth, "MatMul"),
        helper.make_node("Concat", [f"t{depth - 1}", "u"], ["z"], axis=1),
        helper.make_node("Mul", ["z", "dw"], ["zs"]),
        helper.make_node("Relu", ["zs"], ["zr"]),
        helper.make_node("MatMul", ["zr", "f"], ["h"]),
        helper.make_node("MatMul", ["h", "g"], ["y"]),
    ]
    return _model(nodes, inits, [1, 4], [1, 2]), w


def cnn_with_gap(
    depth: int = 8, pool: str = "GlobalAveragePool"
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Conv version on 1x1 maps: 1x1 convs, Concat, a depthwise conv (prunable, keeps the
    channels apart), BatchNorm, Relu, a 1x1 conv, a global pool, Flatten, Gemm. The pool is
    GlobalAveragePool + Flatten (TorchScript's spelling) or ReduceMean over the spatial axes
    + Reshape (dynamo's), with keepdims 1 or 0 ("ReduceMean0")."""
    w = _gap_weights(depth=depth)
    c = w["dw"].size
    inits = {k: v[:, :, None, None] for k, v in w.items() if k not in ("dw", "g")}
    inits |= {"dw": w["dw"].reshape(c, 1, 1, 1), "g": w["g"]}
    inits |= {"gamma": np.ones(5), "beta": np.zeros(5), "mean": np.zeros(5), "var": np.ones(5)}
    nodes = [
        *_chain_nodes(depth, "Conv"),
        helper.make_node("Concat", [f"t{depth - 1}", "u"], ["z"], axis=1),
        helper.make_node("Conv", ["z", "dw"], ["zs"], group=c),
        helper.make_node("Relu", ["zs"], ["zr"]),
        helper.make_node("Conv", ["zr", "f"], ["h"]),
        helper.make_node(
            "BatchNormalization", ["h", "gamma", "beta", "mean", "var"], ["hn"], epsilon=0.0
        ),
        *_pool_nodes(pool),
        helper.make_node("Gemm", ["q", "g"], ["y"], transB=1),
    ]
    if pool.startswith("ReduceMean"):
        inits["flat"] = np.array([1, -1])
    model = _model(nodes, inits, [1, 4, 1, 1], [1, 2])
    if pool.startswith("ReduceMean"):  # the shape must stay int64
        for init in model.graph.initializer:
            if init.name == "flat":
                init.CopyFrom(numpy_helper.from_array(np.array([1, -1], np.int64), "flat"))
    return model, w


def _pool_nodes(pool: str) -> list:
    if pool == "GlobalAveragePool":
        return [
            helper.make_node("GlobalAveragePool", ["hn"], ["p"]),
            helper.make_node("Flatten", ["p"], ["q"]),
        ]
    keepdims = 0 if pool == "ReduceMean0" else 1
    return [
        helper.make_node("ReduceMean", ["hn"], ["p"], axes=[2, 3], keepdims=keepdims),
        helper.make_node("Reshape", ["p", "flat"], ["q"]),
    ]


def cnn_concat_pool(pool: str, depth: int = 8) -> onnx.ModelProto:
    """DenseNet's tail: the Concat of flows far apart goes through BatchNorm, Relu and a
    global pool straight into the classifier Gemm, so the Gemm's input channels carry the
    Concat's per-channel units (GlobalAveragePool + Flatten, or ReduceMean + Reshape)."""
    w = _gap_weights(depth=depth)
    c = w["dw"].size
    inits = {k: v[:, :, None, None] for k, v in w.items() if k not in ("dw", "g", "f")}
    inits["head"] = np.random.default_rng(1).uniform(0.5, 1.5, (2, c))
    inits |= {"gamma": np.ones(c), "beta": np.zeros(c), "mean": np.zeros(c), "var": np.ones(c)}
    nodes = [
        *_chain_nodes(depth, "Conv"),
        helper.make_node("Concat", [f"t{depth - 1}", "u"], ["z"], axis=1),
        helper.make_node(
            "BatchNormalization", ["z", "gamma", "beta", "mean", "var"], ["zn"], epsilon=0.0
        ),
        helper.make_node("Relu", ["zn"], ["hn"]),
        *_pool_nodes(pool),
        helper.make_node("Gemm", ["q", "head"], ["y"], transB=1),
    ]
    if pool.startswith("ReduceMean"):
        inits["flat"] = np.array([1, -1])
    model = _model(nodes, inits, [1, 4, 1, 1], [1, 2])
    for init in model.graph.initializer:  # the shape must stay int64
        if init.name == "flat":
            init.CopyFrom(numpy_helper.from_array(np.array([1, -1], np.int64), "flat"))
    return model


def cnn_with_reducemean(depth: int = 8) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    return cnn_with_gap(depth, pool="ReduceMean")


def cnn_with_reducemean0(depth: int = 8) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    return cnn_with_gap(depth, pool="ReduceMean0")


@pytest.mark.parametrize(
    "build",
    [mlp_with_gap, cnn_with_gap, cnn_with_reducemean, cnn_with_reducemean0],
    ids=["matmul", "conv", "conv-reducemean", "conv-reducemean-keepdims0"],
)
def test_concat_of_flows_beyond_float32_apart_scores_exactly(build) -> None:
    model, w = build()
    want, log_r = _reference(w, 8)
    # The premise: within the layer after the Concat, scores span more than float32 holds.
    assert np.ptp(want["f"]) > LOG_F32_SPAN + 20
    result = onnxflow.score(model)
    assert result.log_flow == pytest.approx(log_r, abs=1e-4)
    if build is mlp_with_gap:
        del want["dw"]  # a constant factor there, not a weight
    assert set(result.log_scores) == set(want)
    for name, ref in want.items():
        got = result.log_scores[name]
        if build is mlp_with_gap:
            got = got.T  # MatMul weights are (in, out)
        got = got.reshape(ref.shape)
        assert np.isfinite(got).all(), name  # no positive score comes out as 0
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4, err_msg=name)


def test_the_layer_after_a_concat_is_a_cut_whatever_the_gap() -> None:
    """Theorem 2 without a reference: the scores of the layer after the Concat, in their
    per-channel units, still sum to R."""
    model, _ = cnn_with_gap()
    result = onnxflow.score(model)
    for name in ("dw", "f", "g"):
        total = float(np.logaddexp.reduce(result.log_scores[name].ravel()))
        assert total == pytest.approx(result.log_flow, abs=1e-5), name


def test_a_zero_branch_with_a_large_unit_does_not_zero_a_residual_sum() -> None:
    """LeViT's bug: y = (h + Mul(big(h), 0)) W3. The dead branch leaves its last weight
    layer with a unit ~+140 nats and is zeroed by a constant (no renormalization); aligning
    at the Add must not take that unit, or the live h underflows and x + 0 becomes 0."""
    rng = np.random.default_rng(1)
    w0, w3 = rng.uniform(0.5, 1.0, (8, 6)), rng.uniform(0.5, 1.0, (6, 4))
    big = [rng.uniform(0.5, 1.0, (6, 6)) * 1e20 for _ in range(3)]
    inits = {"w0": w0, "w3": w3, "zero": np.zeros((1, 6))}
    inits |= {f"big{i}": m for i, m in enumerate(big)}
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"]),
        helper.make_node("MatMul", ["h", "big0"], ["k0"]),
        helper.make_node("MatMul", ["k0", "big1"], ["k1"]),
        helper.make_node("MatMul", ["k1", "big2"], ["k2"]),
        helper.make_node("Mul", ["k2", "zero"], ["dead"]),
        helper.make_node("Add", ["h", "dead"], ["s"]),
        helper.make_node("MatMul", ["s", "w3"], ["y"]),
    ]
    # strict: the zero factor stays zero (the default reads zero-initialized scales as ones)
    result = onnxflow.score(_model(nodes, inits, [1, 8], [1, 4]), zero_init="strict")
    f = np.ones(8) @ w0
    b = w3 @ np.ones(4)
    assert result.log_flow == pytest.approx(float(np.log(f @ b)), abs=1e-5)
    np.testing.assert_allclose(result.log_scores["w0"], np.log(w0 * b[None, :]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.log_scores["w3"], np.log(f[:, None] * w3), rtol=0, atol=1e-5)
    for i in range(3):  # the zeroed branch truly carries no flow
        assert np.isneginf(result.log_scores[f"big{i}"]).all()


def test_a_three_node_sum_with_a_dead_operand_keeps_the_live_one() -> None:
    """x W W (unit ~+142 nats) times 0, plus x: the sum is x."""
    w = np.full((8, 8), 1e30)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["k0"]),
        helper.make_node("MatMul", ["k0", "w"], ["k"]),
        helper.make_node("Mul", ["k", "zero"], ["dead"]),
        helper.make_node("Add", ["x", "dead"], ["s"]),
        helper.make_node("MatMul", ["s", "v"], ["y"]),
    ]
    v = np.full((8, 4), 0.5)
    model = _model(nodes, {"w": w, "zero": np.zeros(1), "v": v}, [1, 8], [1, 4])
    result = onnxflow.score(model, zero_init="strict")
    assert result.log_flow == pytest.approx(np.log(16.0), abs=1e-6)
    np.testing.assert_allclose(result.log_scores["v"], np.log(v), atol=1e-6)


# ---- selection under per-channel units ---------------------------------------------------


def _per_channel_scores(seed: int = 0) -> tuple[FlowScores, dict[str, np.ndarray]]:
    """Two layers; the second has one unit per input channel, 300 nats apart."""
    rng = np.random.default_rng(seed)
    v1 = rng.uniform(0.01, 1.0, (4, 6)).astype(np.float32)
    v2 = rng.uniform(0.01, 1.0, (3, 5, 2, 2)).astype(np.float32)
    v2[0, 0, 0, 0] = 0.0  # blocked
    u2 = np.array([0.0, -300.0, 5.0, -150.0, 1.0]).reshape(1, 5, 1, 1)
    scores = FlowScores({"a": v1, "b": v2}, {"a": 2.0, "b": u2}, 0.0)
    return scores, scores.log()


def _log_top_k(logs: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    flat = np.concatenate([v.ravel() for v in logs.values()])
    order = np.argsort(-flat, kind="stable")[:k]
    keep = np.zeros(flat.size, bool)
    keep[order] = True
    out, start = {}, 0
    for n, v in logs.items():
        out[n] = keep[start : start + v.size].reshape(v.shape)
        start += v.size
    return out


@pytest.mark.parametrize("k", [1, 7, 30, 50, 83])
def test_global_selection_ranks_per_channel_units_exactly(k: int) -> None:
    scores, logs = _per_channel_scores()
    masks = {n: np.ones(v.shape, bool) for n, v in scores.values.items()}
    got = select_global(["a", "b"], scores, masks, k)
    want = _log_top_k(logs, k)
    for n in want:
        np.testing.assert_array_equal(got[n], want[n], err_msg=n)


def test_layer_rankings_use_per_channel_units() -> None:
    scores, logs = _per_channel_scores()
    keys = rank_keys(scores, "b")
    assert keys.dtype == np.float64
    finite = np.isfinite(logs["b"])
    np.testing.assert_array_equal(keys[finite], logs["b"][finite])
    assert keys[0, 0, 0, 0] < keys[finite].min()  # blocked weights rank last
    masks = {n: np.ones(v.shape, bool) for n, v in scores.values.items()}
    kept = reserve(["a", "b"], scores, masks, 4)["b"]
    best = np.sort(logs["b"].ravel())[-4:]
    assert set(logs["b"][kept]) == set(best)
    local = select_local(["a", "b"], scores, masks, 20, [24, 60])["b"]
    assert logs["b"][local].min() >= logs["b"][~local].max()
    # N:M along the input-channel axis: within each group of 5, the best 2 by log-score
    pattern = restrict_to_pattern(keys, masks["b"], 1, 2, 5)
    for o, i, j in itertools.product(range(3), range(2), range(2)):
        col = logs["b"][o, :, i, j]
        assert set(np.flatnonzero(pattern[o, :, i, j])) == set(np.argsort(-col)[:2])


def sequence_concat_with_gap(depth: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x (1, 1, 4) -> [A chain | B] joined along the last axis (not the channels) -> f -> g:
    the positions of a sequence, one far larger than the other (a recurrence unrolled over
    positions makes such joins). Flows there are brought to one float32 unit."""
    w = _gap_weights(depth=depth)
    inits = {k: v.T for k, v in w.items() if k != "dw"}
    nodes = [
        *_chain_nodes(depth, "MatMul"),
        helper.make_node("Concat", [f"t{depth - 1}", "u"], ["z"], axis=2, name="join"),
        helper.make_node("MatMul", ["z", "f"], ["h"]),
        helper.make_node("MatMul", ["h", "g"], ["y"]),
    ]
    return _model(nodes, inits, [1, 1, 4], [1, 1, 2]), w


def test_a_join_beyond_float32_along_a_non_channel_axis_is_reported(caplog) -> None:
    """Past float32's range the smaller part underflows: the weights reading it score 0
    although their score is positive. That loss is not silent: `score` logs it and `prune`
    notes it (report and CLI warning), naming the node and the gap."""
    model, _ = sequence_concat_with_gap(8)
    with caplog.at_level("WARNING", logger="onnxflow.api"):
        scores = onnxflow.score(model).log_scores
    (record,) = [r for r in caplog.records if "scores may be inexact" in r.getMessage()]
    assert "'join'" in record.getMessage()
    gap = float(record.getMessage().split(" nats apart")[0].rsplit(" ", 1)[1])
    assert gap > LOG_F32_SPAN  # B's part is gone
    # what the note warns of: f's rows reading B's part (the last 3 inputs) score 0 ...
    assert np.isneginf(scores["f"][-3:]).all() and np.isfinite(scores["f"][:-3]).all()
    # ... while every weight of B reaches the output (its backward flow is not joined)
    assert np.isfinite(scores["b"]).all()
    report = onnxflow.prune(model, sparsity=0.5, keep_scores=False).report
    assert any("scores may be inexact: 'join'" in n for n in report.notes)
    assert any("scores may be inexact" in n for n in report.to_dict()["notes"])


@pytest.mark.parametrize("build", [lambda: sequence_concat_with_gap(2), mlp_with_gap])
def test_joins_within_float32_or_along_channels_are_not_reported(build, caplog) -> None:
    """A join whose parts are less than float32 spans apart loses nothing, and a channel
    Concat keeps a unit per channel: neither is reported, and no score is 0."""
    model, _ = build()
    with caplog.at_level("WARNING", logger="onnxflow.api"):
        scores = onnxflow.score(model).log_scores
    assert not [r for r in caplog.records if "inexact" in r.getMessage()]
    assert all(np.isfinite(v).all() for v in scores.values())
    report = onnxflow.prune(model, sparsity=0.5, keep_scores=False).report
    assert not [n for n in report.notes if "inexact" in n]
