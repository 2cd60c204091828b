"""Flow rules of the weight layers and products: Conv, ConvTranspose, Gemm, MatMul, Einsum,
products of flows, shared weights, several outputs.

The method (one-hot weights through onnxruntime on a hand-written positive linearization of
each model, or float64 references where R is not linear in a weight) is in tests/rulecheck.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from rulecheck import (
    Net,
    Op,
    assert_log_scores_equal,
    check,
    check_linear_op,
    prune_scores,
)

import onnxflow
from onnxflow.analyze import analyze
from onnxflow.flow import conv as conv_products
from onnxflow.flow.engine import FlowEngine

# ---- Conv ----------------------------------------------------------------------------------

CONV_CASES = {
    # id: (x shape, cout, kernel, attrs)
    "plain_3x3_pad1": ((1, 2, 6, 6), 3, (3, 3), dict(pads=[1, 1, 1, 1])),
    "bias": ((1, 2, 6, 6), 3, (3, 3), dict(pads=[1, 1, 1, 1], bias=True)),
    "stride2": ((1, 2, 8, 8), 3, (3, 3), dict(strides=[2, 2])),
    "stride2_pad1": ((1, 2, 7, 7), 3, (3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "stride_2x1_kernel_2x3": ((1, 2, 7, 6), 3, (2, 3), dict(strides=[2, 1], pads=[0, 1, 1, 0])),
    "dilation2": ((1, 2, 7, 7), 3, (3, 3), dict(dilations=[2, 2])),
    "dilation2_pad2_stride2": (
        (1, 2, 8, 8),
        3,
        (3, 3),
        dict(dilations=[2, 2], pads=[2, 2, 2, 2], strides=[2, 2]),
    ),
    "asymmetric_pads": ((1, 2, 6, 6), 3, (3, 3), dict(pads=[0, 1, 1, 0])),
    "same_upper": ((1, 2, 8, 8), 3, (3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "same_lower": ((1, 2, 8, 8), 3, (3, 3), dict(auto_pad="SAME_LOWER", strides=[2, 2])),
    "same_upper_k2": ((1, 2, 5, 5), 3, (2, 2), dict(auto_pad="SAME_UPPER")),
    "same_lower_k2": ((1, 2, 5, 5), 3, (2, 2), dict(auto_pad="SAME_LOWER")),
    "valid": ((1, 2, 7, 7), 3, (3, 3), dict(auto_pad="VALID", strides=[2, 2])),
    "group2": ((1, 4, 6, 6), 6, (3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "depthwise": ((1, 3, 6, 6), 3, (3, 3), dict(group=3, pads=[1, 1, 1, 1])),
    "depthwise_stride2_multiplier2": (
        (1, 3, 7, 7),
        6,
        (3, 3),
        dict(group=3, pads=[1, 1, 1, 1], strides=[2, 2]),
    ),
    "1x1": ((1, 3, 5, 5), 4, (1, 1), {}),
    "1x1_batch2_2x2": ((2, 3, 2, 2), 4, (1, 1), {}),
    "1x1_on_1x1": ((1, 3, 1, 1), 4, (1, 1), {}),
    "3x3_on_2x2": ((1, 3, 2, 2), 4, (3, 3), dict(pads=[1, 1, 1, 1])),
    "1x1_stride2": ((1, 3, 7, 7), 4, (1, 1), dict(strides=[2, 2])),
    "1x1_stride2_batch2": ((2, 3, 6, 6), 4, (1, 1), dict(strides=[2, 2])),
    "1x1_pad1_stride2": ((1, 3, 5, 5), 4, (1, 1), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "1x1_group3": ((1, 3, 5, 5), 6, (1, 1), dict(group=3)),
    "stride3_k2_pad1": ((1, 2, 8, 8), 3, (2, 2), dict(strides=[3, 3], pads=[1, 1, 1, 1])),
    "1d": ((1, 2, 9), 3, (3,), dict(strides=[2], pads=[1, 0])),
    "1d_tap_only_sees_padding": ((1, 2, 3), 3, (2,), dict(strides=[3], pads=[1, 0])),
    "3d": ((1, 2, 4, 5, 5), 3, (3, 3, 3), dict(strides=[1, 2, 2], pads=[1, 1, 1, 1, 1, 1])),
    "batch2": ((2, 2, 6, 6), 3, (3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "batch2_group2": ((2, 4, 5, 5), 4, (3, 3), dict(group=2, pads=[1, 1, 1, 1])),
}


@pytest.fixture(params=["im2col", "correlate"])
def conv_grad_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Conv's weight-gradient has two implementations: im2col + GEMM, and (above a size
    limit) a grouped correlation. A zero limit forces the second on these tiny graphs."""
    if request.param == "correlate":
        monkeypatch.setattr(conv_products, "IM2COL_LIMIT", 0)
    return str(request.param)


@pytest.fixture(params=["narrow", "wide"])
def transpose_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A one-group Conv's backward on an output of few positions is gy^T @ W and a gathered
    col2im (pointwise: gy^T @ W, and forward x^T @ W^T); elsewhere ConvTranspose (pointwise:
    W^T @ gy, forward W @ x). The limit is moved so both run on every case."""
    limit = 10**9 if request.param == "narrow" else 0
    monkeypatch.setattr(conv_products, "NARROW_COLUMNS", limit)
    return str(request.param)


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv(case: str, conv_grad_path: str, transpose_path: str) -> None:
    x_shape, cout, kernel, attrs = CONV_CASES[case]

    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", x_shape[1])
        y = net.conv(y, cout, kernel, **attrs)
        return net.model(net.pad_conv(y, 2))

    check(build, x_shape)


def test_conv_first_layer_batch2(conv_grad_path: str) -> None:
    """The weight-gradient folds the batch: no pre-layer, so the input is the all-ones batch."""
    check(
        lambda net: net.model(net.conv("x", 3, (3, 3), strides=[2, 2], pads=[0, 1, 1, 0])),
        (2, 2, 7, 7),
    )


DEPTHWISE_CASES = {
    # id: (x shape, kernel, attrs); group = channels. Maps of at most 16 positions run as
    # gathers by default, larger ones as grouped Conv (backward: with the flipped kernel at
    # stride 1, else ConvTranspose; the weight flow is a gather either way); the fixture
    # below runs every case both ways.
    "s1_pad1": ((1, 3, 4, 4), (3, 3), dict(pads=[1, 1, 1, 1])),
    "s2_pad1": ((1, 3, 4, 4), (3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "s2_odd_map": ((1, 3, 5, 3), (3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "dilation2_asymmetric_pads": ((1, 3, 4, 4), (3, 3), dict(dilations=[2, 2], pads=[2, 1, 1, 2])),
    "pad_beyond_kernel": ((1, 3, 4, 4), (3, 3), dict(pads=[3, 0, 0, 3])),
    "k5_on_2x2": ((1, 4, 2, 2), (5, 5), dict(pads=[2, 2, 2, 2])),
    "k5_asymmetric_pads_on_3x3": ((1, 3, 3, 3), (5, 5), dict(pads=[3, 1, 1, 3])),
    "k5x3_s2_dilation2x1_on_3x2": (
        (1, 3, 3, 2),
        (5, 3),
        dict(strides=[2, 1], dilations=[2, 1], pads=[3, 2, 4, 0]),
    ),
    "k2_s3_taps_in_padding": ((1, 2, 3, 4), (2, 2), dict(strides=[3, 3], pads=[1, 1, 1, 1])),
    "same_upper_s2": ((1, 3, 4, 4), (3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "batch2_s2": ((2, 3, 4, 4), (3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "1d": ((1, 3, 9), (3,), dict(strides=[2], pads=[1, 0])),
    "3d": ((1, 2, 2, 2, 3), (3, 3, 3), dict(pads=[1, 1, 1, 1, 1, 1])),
    "large_s2_dilation2": (
        (1, 3, 9, 9),
        (3, 3),
        dict(strides=[2, 2], dilations=[2, 2], pads=[2, 2, 2, 2]),
    ),
}


@pytest.fixture(params=["gather", "grouped_conv"])
def depthwise_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Depthwise convs run forward and backward as gathers on small maps and as grouped
    Conv / ConvTranspose on larger ones: the limit is moved so both run on every case."""
    limit = 10**9 if request.param == "gather" else -1
    monkeypatch.setattr(conv_products, "GATHER_MAX_POSITIONS", limit)
    return str(request.param)


@pytest.mark.parametrize("case", list(DEPTHWISE_CASES))
def test_depthwise(case: str, depthwise_path: str) -> None:
    x_shape, kernel, attrs = DEPTHWISE_CASES[case]
    c = x_shape[1]

    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", c)
        y = net.conv(y, c, kernel, group=c, **attrs)
        return net.model(net.pad_conv(y, 2))

    check(build, x_shape)


def test_depthwise_first_layer_batch2(depthwise_path: str) -> None:
    """No layer before: the weight flow reads the all-ones batch."""
    x_shape = (2, 3, 4, 4)
    check(
        lambda net: net.model(
            net.pad_conv(net.conv("x", 3, (3, 3), group=3, strides=[2, 2], pads=[0, 1, 1, 0]), 2)
        ),
        x_shape,
    )


def test_depthwise_after_concat_keeps_channel_units(depthwise_path: str) -> None:
    """A depthwise conv reading a Concat of two branches (one unit per channel) on a 4x4 map."""

    def build(net: Net) -> onnx.ModelProto:
        a = net.pad_conv(net.pad_conv("x", 2), 2)
        b = net.conv("x", 3, (1, 1))
        y = net.op("Concat", a, b, axis=1)
        y = net.conv(y, 5, (3, 3), group=5, strides=[2, 2], pads=[1, 1, 1, 1])
        return net.model(net.pad_conv(y, 2))

    check(build, (1, 2, 4, 4))


def _flow_ops(model: onnx.ModelProto) -> set[str]:
    analysis = analyze(model)
    return {
        n.op_type for n in FlowEngine(analysis.graph, analysis.dag, "cpu").flow.model.graph.node
    }


def test_narrow_transpose_and_its_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3x3 conv on a 2x2 map: its backward gathers (no ConvTranspose); with a gather
    limit below its size, ConvTranspose again. Scores are checked both ways."""

    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        return net.model(net.pad_conv(net.conv(y, 4, (3, 3), pads=[1, 1, 1, 1]), 2))

    x_shape = (1, 2, 2, 2)
    assert "ConvTranspose" not in _flow_ops(build(Net(x_shape, ref=False)))
    check(build, x_shape)
    monkeypatch.setattr(conv_products, "NARROW_GATHER_LIMIT", 0)
    assert "ConvTranspose" in _flow_ops(build(Net(x_shape, ref=False)))
    check(build, x_shape)


def test_depthwise_taps_that_read_only_padding_are_left_out() -> None:
    """A 5x5 kernel on a 2x2 map with pads 2: only the middle 3x3 taps read the input."""
    plan = conv_products.Depthwise((1, 4, 2, 2), (1, 4, 2, 2), (5, 5), [1, 1], [1, 1], [2] * 4)
    assert plan.box == [(1, 4), (1, 4)] and plan.taps == 9 and plan.cropped
    full = conv_products.Depthwise((1, 4, 6, 6), (1, 4, 6, 6), (5, 5), [1, 1], [1, 1], [2] * 4)
    assert full.box == [(0, 5), (0, 5)] and full.taps == 25 and not full.cropped


def test_tap_index_matches_a_direct_convolution() -> None:
    """`tap_index` against a float64 depthwise convolution written out in numpy, forward
    (gather by `fwd`) and transposed (gather by `bwd`: <dy, conv(x)> = <conv^T(dy), x>)."""
    rng = np.random.default_rng(0)
    in_sp, k, strides, dil, begins, ends = (5, 4), (3, 2), (2, 1), (1, 2), (1, 0), (0, 1)
    out_sp = tuple(
        (in_sp[i] + begins[i] + ends[i] - dil[i] * (k[i] - 1) - 1) // strides[i] + 1
        for i in range(2)
    )
    fwd, bwd = conv_products.tap_index(in_sp, out_sp, k, strides, dil, begins)
    x, w = rng.random(in_sp), rng.random(k)
    xp = np.pad(x, [(begins[0], ends[0]), (begins[1], ends[1])])
    want = np.zeros(out_sp)
    for o in np.ndindex(*out_sp):
        for t in np.ndindex(*k):
            want[o] += (
                w[t] * xp[o[0] * strides[0] + t[0] * dil[0], o[1] * strides[1] + t[1] * dil[1]]
            )
    flat = np.append(x.ravel(), 0.0)
    got = (flat[fwd] * w.reshape(-1, 1)).sum(axis=0).reshape(out_sp)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    dy = rng.random(out_sp)
    dx = (np.append(dy.ravel(), 0.0)[bwd] * w.reshape(-1, 1)).sum(axis=0)
    np.testing.assert_allclose(dx @ x.ravel(), (dy * want).sum(), rtol=1e-12)


def test_conv_output_is_plain_sum_of_kernel() -> None:
    """One conv on ones, no padding: every output is sum|W|, so score(W) = (#outputs) * |W|."""
    net = Net((1, 1, 5, 5), ref=False)
    model = net.model(net.conv("x", 1, (3, 3)))
    w = net.inits["W0"].astype(np.float64)
    with np.errstate(divide="ignore"):
        want = np.log(9 * np.abs(w))
    assert_log_scores_equal(prune_scores(model)["W0"], want, "W0")


# ---- ConvTranspose -------------------------------------------------------------------------

CONV_TRANSPOSE_CASES = {
    # id: (x shape, cout per group, kernel, attrs); weight shape (cin, cout/group, *kernel)
    "plain": ((1, 2, 4, 4), 3, (3, 3), {}),
    "stride2_output_padding1": (
        (1, 2, 4, 4),
        3,
        (3, 3),
        dict(strides=[2, 2], output_padding=[1, 1]),
    ),
    "pads": ((1, 2, 4, 4), 3, (3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "asymmetric_pads": ((1, 2, 4, 4), 3, (3, 3), dict(strides=[2, 2], pads=[0, 1, 1, 0])),
    "dilation2": ((1, 2, 4, 4), 3, (3, 3), dict(dilations=[2, 2], pads=[1, 1, 1, 1])),
    "group2": ((1, 4, 4, 4), 2, (3, 3), dict(group=2, strides=[2, 2], pads=[1, 1, 1, 1])),
    "output_shape_even_total": ((1, 2, 4, 4), 3, (3, 3), dict(strides=[2, 2], output_shape=[7, 7])),
    "output_shape_odd_total": ((1, 2, 4, 4), 3, (3, 3), dict(strides=[2, 2], output_shape=[8, 8])),
    "same_upper": ((1, 2, 4, 4), 3, (3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "same_lower": ((1, 2, 4, 4), 3, (3, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "1d_stride3": ((1, 2, 4), 3, (2,), dict(strides=[3])),
    "batch2": ((2, 2, 3, 3), 3, (3, 3), dict(strides=[2, 2], output_padding=[1, 0])),
}


@pytest.mark.parametrize("case", list(CONV_TRANSPOSE_CASES))
def test_conv_transpose(case: str) -> None:
    x_shape, cout_g, kernel, attrs = CONV_TRANSPOSE_CASES[case]

    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", x_shape[1])
        w = net.weight((x_shape[1], cout_g, *kernel))
        y = net.op("ConvTranspose", y, w, **attrs)
        return net.model(net.pad_conv(y, 2))

    check(build, x_shape)


def test_conv_transpose_output_shape_matches_runtime() -> None:
    """Sanity for the cases above: the attributes give the output size they were meant to."""
    for case, size in [
        ("output_shape_even_total", 7),
        ("output_shape_odd_total", 8),
        ("stride2_output_padding1", 10),
        ("same_upper", 8),
    ]:
        x_shape, cout_g, kernel, attrs = CONV_TRANSPOSE_CASES[case]
        net = Net(x_shape, ref=True)
        y = net.op("ConvTranspose", "x", net.weight((x_shape[1], cout_g, *kernel)), **attrs)
        assert net.shape(y) == (1, cout_g, size, size), case


# ---- Gemm ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, -2.0])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_weight_b(trans_a: int, trans_b: int, alpha: float) -> None:
    """Y = alpha * A' B' + C with the weight as B; |alpha| is used, C is a bias."""

    def build(net: Net) -> onnx.ModelProto:
        h = net.op("MatMul", "x", net.weight((3, 4)))  # (2, 4): M=2, K=4
        a = net.op("Transpose", h, perm=[1, 0]) if trans_a else h
        w = net.weight((5, 4) if trans_b else (4, 5))
        c = net.bias((5,))
        y = net.op(
            "Gemm",
            a,
            w,
            c,
            alpha=abs(alpha) if net.ref else alpha,
            beta=0.5,
            transA=trans_a,
            transB=trans_b,
        )
        return net.model(net.post(y))

    check(build, (2, 3))


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_weight_a(trans_a: int, trans_b: int) -> None:
    """Gemm(W, x): the weight is A; x has shape (K, 1) (or (1, K) with transB)."""

    def build(net: Net) -> onnx.ModelProto:
        h = net.op("MatMul", net.weight((4, 3)), "x")  # weight on the left: (4, 1)
        b = net.op("Transpose", h, perm=[1, 0]) if trans_b else h
        w = net.weight((4, 5) if trans_a else (5, 4))  # A' is (5, 4)
        y = net.op("Gemm", w, b, alpha=-1.5 if not net.ref else 1.5, transA=trans_a, transB=trans_b)
        return net.model(net.op("MatMul", net.weight((2, 5)), y))

    check(build, (3, 1))


# ---- MatMul --------------------------------------------------------------------------------


def test_matmul_2d_weight_right_3d_flow() -> None:
    def build(net: Net) -> onnx.ModelProto:
        y = net.op("MatMul", "x", net.weight((4, 5)))  # (2, 3, 5)
        return net.model(net.op("MatMul", y, net.weight((5, 6))))

    check(build, (2, 3, 4))


def test_matmul_2d_weight_right_4d_flow() -> None:
    def build(net: Net) -> onnx.ModelProto:
        y = net.op("MatMul", "x", net.weight((4, 5)))
        return net.model(net.post(net.op("Relu", y)))

    check(build, (2, 2, 3, 4))


def test_matmul_weight_left() -> None:
    def build(net: Net) -> onnx.ModelProto:
        y = net.op("MatMul", "x", net.weight((4, 4)))  # (2, 3, 4)
        y = net.op("MatMul", net.weight((5, 3)), y)  # (2, 5, 4)
        return net.model(net.post(y))

    check(build, (2, 3, 4))


@pytest.mark.parametrize("w_batch", [1, 2])
def test_matmul_3d_weight_broadcast(w_batch: int) -> None:
    """A batched weight: (1, K, N) broadcasts over the flow's batch, (2, K, N) pairs with it."""

    def build(net: Net) -> onnx.ModelProto:
        y = net.op("MatMul", "x", net.weight((4, 4)))
        y = net.op("MatMul", y, net.weight((w_batch, 4, 5)))
        return net.model(net.post(y))

    check(build, (2, 3, 4))


def test_matmul_flow_broadcast_over_weight_batch() -> None:
    """A flow with batch 1 against a weight with batch 2: its backward sums the batch."""

    def build(net: Net) -> onnx.ModelProto:
        y = net.op("MatMul", "x", net.weight((4, 4)))  # (1, 3, 4)
        y = net.op("MatMul", y, net.weight((2, 4, 5)))  # (2, 3, 5)
        return net.model(net.post(y))

    check(build, (1, 3, 4))


def test_attention_products_of_flows() -> None:
    """softmax(q k^T * c) v with separate q, k, v weights on the input: R is linear in each
    of them (a shared weight before q, k and v would make it cubic)."""

    def build(net: Net) -> onnx.ModelProto:
        q = net.op("MatMul", "x", net.weight((4, 2)))  # (2, 3, 2)
        k = net.op("MatMul", "x", net.weight((4, 2)))
        v = net.op("MatMul", "x", net.weight((4, 5)))
        s = net.op("MatMul", q, net.op("Transpose", k, perm=[0, 2, 1]))  # (2, 3, 3)
        s = net.op("Mul", s, net.const(0.5 if net.ref else -0.5))
        if not net.ref:
            s = net.op("Softmax", s, axis=-1)
        return net.model(net.post(net.op("MatMul", s, v)))

    check(build, (2, 3, 4))


def test_self_product_of_a_flow_is_quadratic() -> None:
    """z = (y y^T) * c, y = x W0: R is quadratic in W0, so dR/dW0 comes from a central
    difference in float64 (exact for a quadratic whatever the step)."""
    c = -0.7
    net = Net((2, 3, 4), ref=False, seed=3)
    y = net.op("MatMul", "x", net.weight((4, 5)))
    z = net.op("MatMul", y, net.op("Transpose", y, perm=[0, 2, 1]))
    z = net.op("Softmax", net.op("Mul", z, net.const(c)), axis=1)
    v = net.op("MatMul", "x", net.weight((4, 2)))
    model = net.model(net.op("MatMul", z, v))
    a0, a1 = (np.abs(net.inits[n].astype(np.float64)) for n in ("W0", "W1"))
    x = np.ones((2, 3, 4))

    def r(w0: np.ndarray, w1: np.ndarray) -> float:
        yy = x @ w0
        return float(np.sum(abs(c) * (yy @ yy.transpose(0, 2, 1)) @ (x @ w1)))

    def central(a: np.ndarray, f: Callable[[np.ndarray], float]) -> np.ndarray:
        grad = np.zeros(a.size)
        for e in range(a.size):
            step = np.zeros(a.size)
            step[e] = 1.0
            grad[e] = (f(a + step.reshape(a.shape)) - f(a - step.reshape(a.shape))) / 2
        with np.errstate(divide="ignore"):
            return np.log(a.ravel() * grad).reshape(a.shape)

    got = prune_scores(model)
    assert_log_scores_equal(got["W0"], central(a0, lambda w: r(w, a1)), "W0")
    assert_log_scores_equal(got["W1"], central(a1, lambda w: r(a0, w)), "W1")


# ---- several outputs, shared weights, unnamed nodes ------------------------------------------


def test_two_outputs() -> None:
    """R sums every output."""

    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        return net.model(net.post(y), net.op("GlobalAveragePool", net.pad_conv(y, 2)))

    check(build, (1, 2, 6, 6))


def test_weight_shared_by_two_parallel_layers() -> None:
    """One initializer used by two convs on parallel branches: its flow is the sum of both."""

    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        w = net.weight((3, 3, 3, 3))
        a = net.op("Conv", y, w, pads=[1, 1, 1, 1])
        b = net.op("Conv", net.op("AveragePool", y, kernel_shape=[2, 2]), w)
        a = net.op("Flatten", net.op("GlobalAveragePool", a))
        return net.model(net.post(a), net.post(net.op("Flatten", b)))

    check(build, (1, 2, 6, 6))


def test_gemm_c_that_carries_flow_is_a_path() -> None:
    """Gemm's C is a bias only when it is constant. Here C is the output of another weight
    layer (a residual folded into the Gemm): R counts the paths through it, scaled by |beta|,
    exactly as Add(alpha*A*B, beta*C) would."""

    def build(net: Net) -> onnx.ModelProto:
        h = net.op("MatMul", "x", net.weight((3, 4)))  # (2, 4)
        side = net.op("MatMul", "x", net.weight((3, 5)))  # (2, 5)
        w = net.weight((4, 5))
        if net.ref:
            y = net.op("Add", net.op("MatMul", h, w), net.op("Mul", side, net.const(0.5)))
        else:
            y = net.op("Gemm", h, w, side, beta=-0.5)
        return net.model(net.post(y))

    check(build, (2, 3))


def test_unnamed_nodes() -> None:
    """Node names are optional in ONNX (`helper.make_node` leaves them empty, and so do
    several exporters): scores must not depend on them."""

    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        y = net.op("Relu", y)
        model = net.model(net.post(net.op("AveragePool", y, kernel_shape=[2, 2])))
        for node in model.graph.node:
            node.name = ""
        return model

    check(build, (1, 2, 6, 6))


# ---- Einsum ---------------------------------------------------------------------------------


def test_einsum_attention() -> None:
    """softmax(q k^T) v written as two Einsums, against the same with MatMuls."""

    def build(net: Net) -> onnx.ModelProto:
        q = net.op("MatMul", "x", net.weight((4, 2)))  # (2, 3, 2)
        k = net.op("MatMul", "x", net.weight((4, 2)))
        v = net.op("MatMul", "x", net.weight((4, 5)))
        if net.ref:
            s = net.op("MatMul", q, net.op("Transpose", k, perm=[0, 2, 1]))
            y = net.op("MatMul", s, v)
        else:
            s = net.op("Softmax", net.op("Einsum", q, k, equation="bqd,bkd->bqk"), axis=-1)
            y = net.op("Einsum", s, v, equation="bqk, bkd -> bqd")
        return net.model(net.post(y))

    check(build, (2, 3, 4))


def test_einsum_broadcast_ellipsis_and_implicit_output() -> None:
    """`...ij,...jk` (implicit `->...ik`) with a batch-1 operand broadcast over batch 2."""

    def build(net: Net) -> onnx.ModelProto:
        a = net.op("MatMul", "x", net.weight((4, 4)))  # (2, 4, 4)
        b = net.op("MatMul", net.op("ReduceSum", "x", net.ints([0])), net.weight((4, 5)))
        y = net.op("MatMul", a, b) if net.ref else net.op("Einsum", a, b, equation="...ij,...jk")
        return net.model(net.post(y))

    check(build, (2, 4, 4))


@pytest.mark.parametrize(
    ("equation", "reference"),
    [
        ("bij->bji", lambda net, y: net.op("Transpose", y, perm=[0, 2, 1])),
        ("...ij->...ji", lambda net, y: net.op("Transpose", y, perm=[0, 2, 1])),
        ("bij->bj", lambda net, y: net.op("ReduceSum", y, net.ints([1]), keepdims=0)),
        ("bij->", lambda net, y: net.op("ReduceSum", y, keepdims=0)),
    ],
)
def test_einsum_one_operand(equation: str, reference: Op) -> None:
    def build(net: Net) -> onnx.ModelProto:
        y = net.op("MatMul", "x", net.weight((4, 5)))  # (2, 3, 5)
        z = reference(net, y) if net.ref else net.op("Einsum", y, equation=equation)
        return net.model(net.post(z) if len(net.shape(z)) >= 2 else z)

    check(build, (2, 3, 4))


def test_einsum_subscript_summed_inside_one_operand() -> None:
    """`bij,bjk->bk`: i is summed inside the first operand; its flow is broadcast back."""

    def build(net: Net) -> onnx.ModelProto:
        a = net.op("MatMul", "x", net.weight((4, 4)))  # (2, 3, 4)
        b = net.op("MatMul", net.op("Transpose", "x", perm=[0, 2, 1]), net.weight((3, 5)))
        if net.ref:
            y = net.op("ReduceSum", net.op("MatMul", a, b), net.ints([1]), keepdims=0)
        else:
            y = net.op("Einsum", a, b, equation="bij,bjk->bk")
        return net.model(net.post(y))

    check(build, (2, 3, 4))


@pytest.mark.parametrize("equation", ["bchw,wk->bchk", "bchw,kw->bchk"])
def test_einsum_with_a_computed_factor_is_that_fixed_linear_map(equation: str) -> None:
    """A constant the graph computes from stored tensors (a table gathered by constant
    indices: MViTv2's relative positions) is a fixed factor, read as its |value|: the
    weights before and after score as through the dense positive matrix of the op."""

    def op(net: Net, y: str) -> str:
        table = net.const(net.signed((5, 6)))
        rows = net.ints([0, 2, 2, 4, 1, 3] if equation.endswith("wk->bchk") else [1, 0, 4, 2])
        factor = net.op("Gather", table, rows, axis=0)  # (w, k) = (6, 6), or (k, w) = (4, 6)
        return net.op("Einsum", y, factor, equation=equation)

    check_linear_op(op)


def test_einsum_with_a_stored_constant_is_that_fixed_linear_map() -> None:
    """A stored constant (a layer's kernel written as an Einsum, a position table that the
    exporter stored gathered) is a fixed factor too: not a prunable layer."""
    check_linear_op(
        lambda net, y: net.op("Einsum", y, net.const(net.signed((6, 4))), equation="bchw,wk->bchk")
    )


@pytest.mark.parametrize("computed", [True, False])
def test_a_constant_einsum_factor_is_noted(computed: bool) -> None:
    """The factor is not pruned (a kernel there stays dense), and the report says so."""
    net = Net((1, 2, 6, 6), ref=False)
    y = net.pad_conv("x", 3)
    factor = net.const(net.signed((4, 6)))
    if computed:
        factor = net.op("Gather", net.const(net.signed((5, 6))), net.ints([1, 0, 4, 2]), axis=0)
    model = net.model(net.post(net.op("Einsum", y, factor, equation="bchw,kw->bchk")))
    result = onnxflow.prune(model, sparsity=0.5)
    assert any("1 Einsum node with a constant operand" in n for n in result.report.notes)
    assert sorted(result.masks) == sorted(net.weights)  # the factor is none of them


def test_einsum_refusals_are_one_line() -> None:
    """Diagonals (a subscript repeated in one operand) have no rule."""
    net = Net((2, 4, 4), ref=False)
    y = net.op("MatMul", "x", net.weight((4, 4)))
    model = net.model(net.post(net.op("Einsum", y, equation="bii->bi")))
    with pytest.raises(onnxflow.OnnxflowError, match="diagonals") as e:
        prune_scores(model)
    assert "\n" not in str(e.value) and "Einsum" in str(e.value)
