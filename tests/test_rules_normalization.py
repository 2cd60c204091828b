"""Flow rules of normalization: exporter spellings of division by a statistic, ratios of
flows, the norms against float64 references.

The method (one-hot weights through onnxruntime on a hand-written positive linearization of
each model, or float64 references where R is not linear in a weight) is in tests/rulecheck.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rulecheck import (
    Net,
    Op,
    assert_same_scores,
    central_log_scores,
    check,
    model,
    prune_scores,
)

import onnxflow

# ---- normalization by division, spelled out by exporters ------------------------------------


def _consts(**values: float) -> dict[str, np.ndarray]:
    return {k: np.array(v, np.float32) for k, v in values.items()}


def _scale_only() -> onnx.ModelProto:
    return model([helper.make_node("Mul", ["h", "gamma"], ["n"])], {})


def _norm_spellings() -> dict[str, tuple[list[onnx.NodeProto], dict[str, np.ndarray]]]:
    """h -> [nodes] -> n = gamma * h / stat(h), as exporters write RMSNorm and F.normalize."""
    axes = {"axes": np.array([-1], np.int64), "shape": np.array([1, 4, 8], np.int64)}
    c = {**_consts(two=2.0, eps=1e-6, one=1.0, minus_half=-0.5), **axes}
    gamma = [helper.make_node("Mul", ["gamma", "norm"], ["n"])]
    return {
        # T5 (TorchScript): h * (1 / sqrt(mean(h^2) + eps)) after a float cast
        "t5_reciprocal_by_div": (
            [
                helper.make_node("Cast", ["h"], ["hc"], to=TensorProto.FLOAT),
                helper.make_node("Pow", ["hc", "two"], ["sq"]),
                helper.make_node("ReduceMean", ["sq", "axes"], ["ms"]),
                helper.make_node("Add", ["ms", "eps"], ["me"]),
                helper.make_node("Sqrt", ["me"], ["rms"]),
                helper.make_node("Div", ["one", "rms"], ["inv"]),
                helper.make_node("Mul", ["hc", "inv"], ["norm"]),
                *gamma,
            ],
            c,
        ),
        # LLaMA-style rsqrt as Reciprocal(Sqrt), product written the other way round
        "rsqrt_reciprocal": (
            [
                helper.make_node("Mul", ["h", "h"], ["sq"]),
                helper.make_node("ReduceMean", ["sq", "axes"], ["ms"]),
                helper.make_node("Add", ["ms", "eps"], ["me"]),
                helper.make_node("Sqrt", ["me"], ["rms"]),
                helper.make_node("Reciprocal", ["rms"], ["inv"]),
                helper.make_node("Mul", ["inv", "h"], ["norm"]),
                *gamma,
            ],
            c,
        ),
        # (mean(h^2) + eps) ** -0.5
        "pow_minus_half": (
            [
                helper.make_node("Pow", ["h", "two"], ["sq"]),
                helper.make_node("ReduceMean", ["sq", "axes"], ["ms"]),
                helper.make_node("Add", ["ms", "eps"], ["me"]),
                helper.make_node("Pow", ["me", "minus_half"], ["inv"]),
                helper.make_node("Mul", ["h", "inv"], ["norm"]),
                *gamma,
            ],
            c,
        ),
        # F.normalize: h / Expand(Clip(ReduceL2(h), eps), shape)
        "f_normalize_expand_clip": (
            [
                helper.make_node("ReduceL2", ["h", "axes"], ["l2"], keepdims=1),
                helper.make_node("Clip", ["l2", "eps", ""], ["cl"]),
                helper.make_node("Expand", ["cl", "shape"], ["ex"]),
                helper.make_node("Div", ["h", "ex"], ["norm"]),
                *gamma,
            ],
            c,
        ),
        # ConViT: h / Unsqueeze(ReduceSum(h, keepdims=0)), eps by Max
        "unsqueeze_max_eps": (
            [
                helper.make_node("ReduceSum", ["h", "axes"], ["s"], keepdims=0),
                helper.make_node("Max", ["s", "eps"], ["sm"]),
                helper.make_node("Unsqueeze", ["sm", "axes"], ["su"]),
                helper.make_node("Div", ["h", "su"], ["norm"]),
                *gamma,
            ],
            c,
        ),
    }


@pytest.mark.parametrize("spelling", list(_norm_spellings()))
def test_normalization_by_a_statistic_scores_like_its_scale(spelling: str) -> None:
    nodes, consts = _norm_spellings()[spelling]
    assert_same_scores(model(nodes, consts, opset=18), _scale_only())


def test_normalization_spellings_leave_no_division_in_the_analysis_graph() -> None:
    from onnxflow.analyze import analyze

    for spelling, (nodes, consts) in _norm_spellings().items():
        ops = {n.op for n in analyze(model(nodes, consts, opset=18)).graph.nodes}
        assert not ops & {"Div", "Reciprocal", "ReduceL2", "ReduceMean", "Pow"}, spelling


def _const_over_flow(net: Net, y: str) -> str:
    c = net.signed((1, 3, 1, 1))
    if net.ref:
        return net.op("Mul", y, net.const(np.abs(c)))
    return net.op("Div", net.const(c), y)


@pytest.mark.parametrize("op", [_const_over_flow], ids=["const_over_flow"])
def test_division_rules(op: Op) -> None:
    def build(net: Net) -> onnx.ModelProto:
        return net.model(net.post(op(net, net.pad_conv("x", 3))))

    check(build, (1, 2, 6, 6))


def test_ratio_of_two_flows_passes_the_numerator() -> None:
    """Linear attention (EfficientViT) and ConViT's gating divide one flow by another: the
    numerator's weights score as if the denominator were absent, the denominator's weight
    (reaching the output only through the ratio) scores zero."""

    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        den = net.pad_conv("x", 3)
        z = y if net.ref else net.op("Div", y, den)
        return net.model(net.post(z))

    net = Net((1, 2, 6, 6), ref=False)
    got = prune_scores(build(net))
    ref_net = Net((1, 2, 6, 6), ref=True)
    ref = build(ref_net)
    from rulecheck import assert_log_scores_equal, brute_force_log_scores

    for name in ("W0", "W2"):
        assert_log_scores_equal(got[name], brute_force_log_scores(ref, name), name)
    assert np.isneginf(got["W1"]).all()


# ---- norms: float64 references -----------------------------------------------------------------


def _norm_model(op: str, **attrs: Any):
    """x (1, 4, 6) -> MatMul W0 (6, 5) -> op -> MatMul W1 -> y; returns the model and |W|."""
    rng = np.random.default_rng(5)
    last = {"GlobalLpPool": 1, "LpPool": 4}.get(op, 5)
    rows = 4 if op in ("LpPool", "GlobalLpPool") else 1
    w0 = rng.uniform(0.5, 1.5, (6, 5)) * rng.choice([-1, 1], (6, 5))
    w1 = rng.uniform(0.5, 1.5, (last, 3)) * rng.choice([-1, 1], (last, 3))
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["h"])]
    if op in ("LpPool", "GlobalLpPool"):
        nodes.append(helper.make_node(op, ["h"], ["n"], **attrs))
    else:
        nodes.append(helper.make_node(op, ["h", "axes"], ["n"], keepdims=1))
    nodes.append(helper.make_node("MatMul", ["n", "W1"], ["y"]))
    inits = {"W0": w0, "W1": w1, "axes": np.array([1], np.int64)}
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, rows, 3])],
        [
            numpy_helper.from_array(v.astype(np.int64 if k == "axes" else np.float32), k)
            for k, v in inits.items()
        ],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    f64 = lambda a: np.abs(a).astype(np.float32).astype(np.float64)  # noqa: E731
    return m, f64(w0), f64(w1)


def _np_norm(op: str, h: np.ndarray, p: int = 2) -> np.ndarray:
    if op == "ReduceL2":
        return np.sqrt((h**2).sum(axis=1, keepdims=True))
    if op == "ReduceSumSquare":
        return (h**2).sum(axis=1, keepdims=True)
    if op == "GlobalLpPool":
        return (h**p).sum(axis=2, keepdims=True) ** (1 / p)
    # LpPool, kernel 2 stride 1 along the last axis of (1, 4, 5)
    return (h[:, :, :-1] ** p + h[:, :, 1:] ** p) ** (1 / p)


@pytest.mark.parametrize(
    "op, attrs",
    [
        ("ReduceL2", {}),
        ("ReduceSumSquare", {}),
        ("GlobalLpPool", {"p": 3}),
        ("LpPool", {"kernel_shape": [2], "p": 2}),
        ("LpPool", {"kernel_shape": [2], "p": 3}),
    ],
)
def test_norms_against_float64_reference(op: str, attrs: dict[str, Any]) -> None:
    m, a0, a1 = _norm_model(op, **attrs)
    p = attrs.get("p", 2)
    if op == "LpPool":  # pools the last axis: W1 acts on the pooled length 4
        a1 = a1[:4]
        m.graph.initializer[1].CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(m.graph.initializer[1])[:4].copy(), "W1")
        )
    x = np.ones((1, 4, 6))

    def total(w0: np.ndarray, w1: np.ndarray) -> float:
        return float((_np_norm(op, x @ w0, p) @ w1).sum())

    got = onnxflow.score(m)
    for name, want in (
        ("W0", central_log_scores(a0, lambda v: total(v, a1))),
        ("W1", central_log_scores(a1, lambda v: total(a0, v))),
    ):
        np.testing.assert_allclose(got.log_scores[name], want, atol=1e-4, rtol=0, err_msg=name)
