"""Flow rules for normalization by division, ratios of flows, recurrent cells and the rest of
the default-domain operator set, against brute force (test_rules.py explains the method:
one-hot weights through onnxruntime on a hand-written positive linearization, or float64
references where R is not linear in a weight)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_linearize import assert_same_scores, model
from test_rules import Net, check, prune_scores
from test_rules_more import check_linear_op

import onnxflow

Op = Callable[[Net, str], str]

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
    from onnxflow.api import analysis_passes, initial_state, make_options

    for spelling, (nodes, consts) in _norm_spellings().items():
        state = initial_state(model(nodes, consts, opset=18), make_options(sparsity=0.5))
        for p in analysis_passes():
            state = p(state)
        assert state.graph is not None
        ops = {n.op for n in state.graph.nodes}
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
    from test_rules import assert_log_scores_equal, brute_force_log_scores

    for name in ("W0", "W2"):
        assert_log_scores_equal(got[name], brute_force_log_scores(ref, name), name)
    assert np.isneginf(got["W1"]).all()
