"""Flow rules, op by op: onnxflow's dense SynFlow scores against brute force.

For a graph whose positive linearization is affine in one weight tensor `W` (every other
weight fixed and positive, no biases), `dR/dW[e]` is the sum of the outputs of the graph run
with `W` replaced by the one-hot tensor `e_e`, less the sum with `W = 0` (paths that avoid `W`).
`brute_force_log_scores` computes that for every entry with onnxruntime and returns
`log(|W| * dR/dW)`, to compare with `onnxflow.prune(..., sparsity=0).log_scores`. Where R is
not linear in `W` (a flow multiplied by itself) a float64 central difference is used instead.

Each case is a small `build(net)` function. It is built twice from the same random numbers:
once as the model to prune (signed weights, biases, the op under test) and once as the
*reference* (`net.ref`): the hand-written positive linearization that onnxruntime can run
as it is (|W|, zero biases, Softmax removed, Sub -> Add, BatchNormalization -> Mul...).

Most cases put a weight layer before and after the op under test, so the score of the one
before checks the op's transposed (backward) rule and the score of the one after checks its
forward rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxflow
from onnxflow.flow.rules import linear as linear_rules

OPSET = 17
IR_VERSION = 10
ATOL = 1e-5
ONE_HOT = 1024.0

Shape = tuple[int, ...]


# ---- graph construction ------------------------------------------------------------------


class Net:
    """One graph under construction, with an all-ones float input `x`.

    `weight()` draws signed random weights (one entry exactly zero, to check the -inf
    pattern) and returns them as |W| when `ref` is true, so the model and its reference
    share every number.
    """

    def __init__(self, x_shape: Shape, *, ref: bool, seed: int = 0, opset: int = OPSET) -> None:
        self.x_shape = tuple(x_shape)
        self.opset = opset
        self.ref = ref
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.weights: list[str] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}{self._count}"

    def const(self, value: Any, hint: str = "c") -> str:
        name = self._name(hint)
        arr = np.asarray(value)
        self.inits[name] = arr.astype(np.float32) if arr.dtype.kind == "f" else arr
        return name

    def ints(self, value: Sequence[int]) -> str:
        return self.const(np.asarray(value, dtype=np.int64), "i")

    def signed(self, shape: Shape) -> np.ndarray:
        """Random values with |v| in [0.5, 1.5] and random signs (never zero)."""
        mag = self.rng.uniform(0.5, 1.5, size=shape)
        return np.where(self.rng.random(size=shape) < 0.5, -mag, mag)

    def weight(self, shape: Shape, *, zero: bool = True) -> str:
        w = self.signed(shape)
        if zero and w.size > 1:
            w.flat[w.size // 2] = 0.0
        name = f"W{len(self.weights)}"
        self.weights.append(name)
        self.inits[name] = np.abs(w).astype(np.float32) if self.ref else w.astype(np.float32)
        return name

    def bias(self, shape: Shape) -> str:
        """A bias: random in the model, zero in the reference (R has no biases)."""
        b = self.signed(shape)
        return self.const(np.zeros(shape) if self.ref else b, "b")

    def token(self, shape: Shape, beside: str) -> str:
        """A learned token concatenated beside `beside`: random in the model; in the
        reference a source of ones in the unit of `beside`, i.e. its largest element in the
        dense network, held fixed (flow/sources.py)."""
        b = self.signed(shape)
        if not self.ref:
            return self.const(b, "t")
        top = float(run(self._model([beside], [None]))[0].max())
        return self.const(np.full(shape, top), "t")

    def op(self, op_type: str, *inputs: str, n_out: int = 1, **attrs: Any) -> Any:
        outs = [self._name(op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], **attrs))
        return outs[0] if n_out == 1 else outs

    def model(self, *outputs: str) -> onnx.ModelProto:
        """The graph so far with these outputs (their shapes from one onnxruntime run)."""
        shapes = [v.shape for v in run(self._model(outputs, [None] * len(outputs)))]
        return self._model(outputs, shapes)

    def _model(self, outputs: Sequence[str], shapes: Sequence[Any]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.x_shape))],
            [
                helper.make_tensor_value_info(o, TensorProto.FLOAT, s)
                for o, s in zip(outputs, shapes, strict=True)
            ],
            [numpy_helper.from_array(v, k) for k, v in self.inits.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = IR_VERSION
        return model

    def value(self, name: str) -> np.ndarray:
        """The value of a tensor of the graph so far, on the all-ones input."""
        (y,) = run(self._model([name], [None]))
        return y

    def shape(self, name: str) -> Shape:
        return tuple(self.value(name).shape)

    # weight layers -----------------------------------------------------------------------
    def conv(
        self,
        x: str,
        cout: int,
        kernel: Sequence[int],
        *,
        group: int = 1,
        bias: bool = False,
        **attrs: Any,
    ) -> str:
        cin = self.shape(x)[1]
        w = self.weight((cout, cin // group, *kernel))
        inputs = [x, w, self.bias((cout,))] if bias else [x, w]
        return self.op("Conv", *inputs, group=group, **attrs)

    def pad_conv(self, x: str, cout: int) -> str:
        """A plain stride-1 'same' conv (kernel 3 in every spatial dim): a spatially varying
        forward flow before the op under test, a varying backward flow after it."""
        nd = len(self.shape(x)) - 2
        return self.conv(x, cout, [3] * nd, pads=[1] * 2 * nd)

    def post(self, y: str, n: int = 2) -> str:
        """A MatMul weight on the last axis: checks the forward rule of whatever made `y`."""
        return self.op("MatMul", y, self.weight((self.shape(y)[-1], n)))


Build = Callable[[Net], onnx.ModelProto]


# ---- running and brute force ---------------------------------------------------------------


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto) -> list[np.ndarray]:
    x = model.graph.input[0]
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    return _session(model).run(None, {x.name: np.ones(shape, np.float32)})


def brute_force_log_scores(model: onnx.ModelProto, weight_name: str) -> np.ndarray:
    """log(|W| * dR/dW) for a graph that is linear in `weight_name`, entry by entry.

    R = sum of all outputs on the all-ones input; dR/dW[e] is R with W replaced by the
    one-hot tensor e_e, less R with W = 0 (paths that avoid W: other branches, other
    outputs). The weight becomes a graph input so one session serves all entries.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    (init,) = [t for t in m.graph.initializer if t.name == weight_name]
    w = numpy_helper.to_array(init).astype(np.float64)
    m.graph.initializer.remove(init)
    m.graph.input.append(helper.make_tensor_value_info(weight_name, TensorProto.FLOAT, w.shape))
    sess = _session(m)
    x = m.graph.input[0]
    ones = np.ones([d.dim_value for d in x.type.tensor_type.shape.dim], np.float32)

    def r(value: np.ndarray) -> float:
        outs = sess.run(None, {x.name: ones, weight_name: value.reshape(w.shape)})
        return sum(float(np.sum(o, dtype=np.float64)) for o in outs)

    base = r(np.zeros(w.size, np.float32))  # paths that avoid W (other branches, outputs)
    grad = np.zeros(w.size)
    for e in range(w.size):
        # A large power of two: exact scaling, and the W path dominates `base`, so the
        # difference keeps float32 relative accuracy.
        onehot = np.zeros(w.size, np.float32)
        onehot[e] = ONE_HOT
        grad[e] = (r(onehot) - base) / ONE_HOT
    with np.errstate(divide="ignore"):
        return np.log(np.abs(w).ravel() * grad).reshape(w.shape)


def assert_log_scores_equal(got: np.ndarray, want: np.ndarray, label: str) -> None:
    assert got.shape == want.shape, label
    assert got.dtype == np.float64, label
    assert not np.isnan(got).any() and not np.isposinf(got).any(), label
    np.testing.assert_array_equal(
        np.isneginf(got), np.isneginf(want), err_msg=f"{label}: zero-score pattern"
    )
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=0, atol=ATOL, err_msg=label)


def prune_scores(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return onnxflow.prune(model, sparsity=0.0, iterations=1).log_scores


def check(build: Build, x_shape: Shape, seed: int = 0, opset: int = OPSET) -> None:
    """Every prunable weight of `build`'s model scores as brute force on its reference."""
    net = Net(x_shape, ref=False, seed=seed, opset=opset)
    model = build(net)
    reference = build(Net(x_shape, ref=True, seed=seed, opset=opset))
    got = prune_scores(model)
    assert sorted(got) == sorted(net.weights)
    for name in net.weights:
        assert_log_scores_equal(got[name], brute_force_log_scores(reference, name), name)


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
        monkeypatch.setattr(linear_rules, "_IM2COL_LIMIT", 0)
    return str(request.param)


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv(case: str, conv_grad_path: str) -> None:
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


# ---- ops after a weight layer ----------------------------------------------------------------
# Each op gets `y`, the (1, 3, 6, 6) output of a padded 3x3 conv, and a post-layer follows.

Op = Callable[[Net, str], str]


def _bypass(op_type: str, *extra: Callable[[Net], str], **attrs: Any) -> Op:
    """An op that is the identity on the linearized graph: absent from the reference."""

    def op(net: Net, y: str) -> str:
        inputs = [make(net) for make in extra]
        return y if net.ref else net.op(op_type, y, *inputs, **attrs)

    return op


def _avgpool(**attrs: Any) -> Op:
    return lambda net, y: net.op("AveragePool", y, **attrs)


def _branch_add(net: Net, y: str) -> str:
    return net.op("Add", y, net.pad_conv("x", 3))


def _broadcast_add(net: Net, y: str) -> str:
    """(1, 3, 6, 6) + (1, 3, 1, 1): the backward of the small operand sums over space."""
    return net.op("Add", y, net.op("GlobalAveragePool", net.pad_conv("x", 3)))


def _sub(net: Net, y: str) -> str:
    return net.op("Add" if net.ref else "Sub", net.pad_conv("x", 3), y)


def _flow_times_flow(net: Net, y: str) -> str:
    return net.op("Mul", y, net.pad_conv("x", 3))


def _const_factor(op_type: str, shape: Shape) -> Op:
    def op(net: Net, y: str) -> str:
        c = net.signed(shape)  # drawn in both builds
        if net.ref:
            return net.op("Mul", y, net.const(np.abs(c) if op_type == "Mul" else 1 / np.abs(c)))
        return net.op(op_type, y, net.const(c))

    return op


def _bias_add(shape: Shape) -> Op:
    return lambda net, y: net.op("Add", net.bias(shape), y)


def _batchnorm(net: Net, y: str) -> str:
    gamma, beta, mean = net.signed((3,)), net.signed((3,)), net.signed((3,))
    var = net.rng.uniform(0.1, 2.0, size=3)
    if net.ref:
        s = np.abs(gamma) / np.sqrt(var + 1e-3)
        return net.op("Mul", y, net.const(s.reshape(1, 3, 1, 1)))
    return net.op(
        "BatchNormalization", y, *(net.const(v) for v in (gamma, beta, mean, var)), epsilon=1e-3
    )


def _concat(axis: int) -> Op:
    return lambda net, y: net.op(
        "Concat", y, net.conv("x", 2 if axis == 1 else 3, (3, 3), pads=[1, 1, 1, 1]), axis=axis
    )


def _reduce_sum(axes: Sequence[int] | None, keepdims: int, noop: int = 0) -> Op:
    def op(net: Net, y: str) -> str:
        inputs = [y] if axes is None else [y, net.ints(axes)]
        return net.op("ReduceSum", *inputs, keepdims=keepdims, noop_with_empty_axes=noop)

    return op


OP_CASES: dict[str, Op] = {
    # pooling and reductions
    "avgpool_2x2_s2": _avgpool(kernel_shape=[2, 2], strides=[2, 2]),
    "avgpool_3x3_pad1_exclude_pad": _avgpool(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "avgpool_3x3_pad1_include_pad": _avgpool(
        kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1
    ),
    "avgpool_s2_pad1_exclude_pad": _avgpool(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "avgpool_s2_pad1_include_pad": _avgpool(
        kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1
    ),
    "avgpool_ceil_exclude_pad": _avgpool(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "avgpool_ceil_include_pad": _avgpool(
        kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, count_include_pad=1
    ),
    "avgpool_ceil_pad1_exclude_pad": _avgpool(
        kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, pads=[1, 1, 1, 1]
    ),
    "avgpool_ceil_pad1_include_pad": _avgpool(
        kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, pads=[1, 1, 1, 1], count_include_pad=1
    ),
    "avgpool_asym_pads_include_pad": _avgpool(
        kernel_shape=[2, 3], pads=[0, 1, 1, 0], count_include_pad=1
    ),
    "avgpool_same_upper": _avgpool(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
    "avgpool_same_upper_k2_include_pad": _avgpool(
        kernel_shape=[2, 2], auto_pad="SAME_UPPER", count_include_pad=1
    ),
    "avgpool_same_lower_k2_exclude_pad": _avgpool(kernel_shape=[2, 2], auto_pad="SAME_LOWER"),
    "avgpool_same_lower_k2_include_pad": _avgpool(
        kernel_shape=[2, 2], auto_pad="SAME_LOWER", count_include_pad=1
    ),
    "global_avgpool_flatten": lambda net, y: net.op("Flatten", net.op("GlobalAveragePool", y)),
    "reducemean_keepdims1": lambda net, y: net.op("ReduceMean", y, axes=[2, 3], keepdims=1),
    "reducemean_keepdims0": lambda net, y: net.op("ReduceMean", y, axes=[2, 3], keepdims=0),
    "reducemean_axis1_keepdims0": lambda net, y: net.op("ReduceMean", y, axes=[1], keepdims=0),
    "reducemean_negative_axis": lambda net, y: net.op("ReduceMean", y, axes=[-2], keepdims=1),
    "reducesum_keepdims1": _reduce_sum([2, 3], 1),
    "reducesum_keepdims0": _reduce_sum([2, 3], 0),
    "reducesum_axis2_keepdims0": _reduce_sum([2], 0),
    "reducesum_no_axes_noop": _reduce_sum(None, 1, noop=1),
    # data movement
    "concat_channels": _concat(1),
    "concat_width": _concat(3),
    "concat_negative_axis": lambda net, y: net.op("Concat", net.pad_conv("x", 3), y, axis=-2),
    # a constant beside a flow is a learned token: a source of ones (flow/sources.py)
    "concat_constant": lambda net, y: net.op("Concat", net.token((1, 2, 6, 6), y), y, axis=1),
    "transpose_nhwc": lambda net, y: net.op("Transpose", y, perm=[0, 2, 3, 1]),
    "transpose_default_perm": lambda net, y: net.op("Transpose", y),
    "reshape": lambda net, y: net.op("Reshape", y, net.ints([1, 9, 12])),
    "reshape_minus1_zero": lambda net, y: net.op("Reshape", y, net.ints([0, -1, 4])),
    "flatten_axis1": lambda net, y: net.op("Flatten", y),
    "flatten_axis2": lambda net, y: net.op("Flatten", y, axis=2),
    "unsqueeze": lambda net, y: net.op("Unsqueeze", y, net.ints([2])),
    "squeeze": lambda net, y: net.op("Squeeze", net.op("GlobalAveragePool", y), net.ints([2, 3])),
    # identity on the linearization
    "identity": _bypass("Identity"),
    "dropout": _bypass("Dropout"),
    "dropout_with_mask": lambda net, y: y if net.ref else net.op("Dropout", y, n_out=2)[0],
    "relu": _bypass("Relu"),
    "leaky_relu": _bypass("LeakyRelu", alpha=0.1),
    "sigmoid": _bypass("Sigmoid"),
    "neg": _bypass("Neg"),
    "clip": _bypass("Clip", lambda net: net.const(0.0), lambda net: net.const(1.0)),
    "softmax_channels": _bypass("Softmax", axis=1),
    "softmax_last": _bypass("Softmax", axis=-1),
    # linear arithmetic
    "add_branches": _branch_add,
    "add_self": lambda net, y: net.op("Add", y, y),
    "sum_of_three_with_bias": lambda net, y: net.op(
        "Sum", y, net.bias((1, 3, 1, 1)), net.pad_conv("x", 3)
    ),
    "add_broadcast_branch": _broadcast_add,
    "add_bias_scalar": _bias_add(()),
    "add_bias_per_channel": _bias_add((1, 3, 1, 1)),
    "add_bias_broadcasts_output": lambda net, y: net.op(
        "Add", net.op("GlobalAveragePool", y), net.bias((1, 3, 2, 5))
    ),
    "sub_branches": _sub,
    "mul_negative_scalar": _const_factor("Mul", ()),
    "mul_per_channel": _const_factor("Mul", (1, 3, 1, 1)),
    "mul_broadcasts_output": lambda net, y: _const_factor("Mul", (1, 3, 2, 5))(
        net, net.op("GlobalAveragePool", y)
    ),
    "div_scalar": _const_factor("Div", ()),
    "div_per_position": _const_factor("Div", (1, 1, 6, 6)),
    "mul_two_flows": _flow_times_flow,
    "batchnorm": _batchnorm,
}


@pytest.mark.parametrize("case", list(OP_CASES))
def test_op_after_weight(case: str) -> None:
    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        z = OP_CASES[case](net, y)
        return net.model(net.post(z) if len(net.shape(z)) >= 2 else z)

    check(build, (1, 2, 6, 6))


@pytest.mark.parametrize("case", ["reducemean_all", "reducesum_all"])
def test_reduction_to_scalar(case: str) -> None:
    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        if case == "reducemean_all":
            return net.model(net.op("ReduceMean", y, keepdims=0))
        return net.model(net.op("ReduceSum", y, keepdims=0))

    check(build, (1, 2, 6, 6))


def test_two_outputs() -> None:
    """R sums every output."""

    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        return net.model(net.post(y), net.op("GlobalAveragePool", net.pad_conv(y, 2)))

    check(build, (1, 2, 6, 6))


def test_batchnorm_on_2d_flow() -> None:
    """BatchNormalization after a dense layer: the scale broadcasts as (1, C)."""

    def build(net: Net) -> onnx.ModelProto:
        y = net.op("Gemm", "x", net.weight((3, 4)), transB=0)  # (2, 4)
        gamma, beta, mean = net.signed((4,)), net.signed((4,)), net.signed((4,))
        var = net.rng.uniform(0.1, 2.0, size=4)
        if net.ref:
            y = net.op("Mul", y, net.const((np.abs(gamma) / np.sqrt(var + 1e-5)).reshape(1, 4)))
        else:
            y = net.op("BatchNormalization", y, *(net.const(v) for v in (gamma, beta, mean, var)))
        return net.model(net.post(y))

    check(build, (2, 3))


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


# ---- MaxPool -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("w", "winner"),
    [
        ([1.0, 2.0, -0.5, 1.5], 1),
        ([-1.0, 0.5, -4.0, 2.0], 2),  # |W| decides
        ([3.0, 3.0, 3.0, 3.0], 0),  # ties: the first maximal input
        ([1.0, 2.0, 2.0, -2.0], 1),
    ],
)
def test_maxpool_flow_goes_to_first_maximal_input(w: list[float], winner: int) -> None:
    """ones(1,1,1,1) -> 1x1 conv to 4 channels -> reshape to 2x2 -> 2x2 max pool: the only
    path to the output runs through the input that wins the max, so only its weight scores."""
    net = Net((1, 1, 1, 1), ref=False)
    net.inits["W0"] = np.asarray(w, np.float32).reshape(4, 1, 1, 1)
    net.weights.append("W0")
    y = net.op("Reshape", net.op("Conv", "x", "W0"), net.ints([1, 1, 2, 2]))
    model = net.model(net.op("MaxPool", y, kernel_shape=[2, 2]))
    want = np.full(4, -np.inf)
    want[winner] = np.log(abs(w[winner]))
    assert_log_scores_equal(prune_scores(model)["W0"], want.reshape(4, 1, 1, 1), "W0")


def test_maxpool_4x4_by_hand() -> None:
    """ones(1,1,4,4) -> 3x3 conv pad 1 -> 2x2/2 max pool: each window holds exactly one
    interior output (sum|W|, strictly the largest), so R = 4 sum|W| and score = 4|W|."""
    net = Net((1, 1, 4, 4), ref=False)
    y = net.conv("x", 1, (3, 3), pads=[1, 1, 1, 1])
    net.inits["W0"] = net.signed((1, 1, 3, 3)).astype(np.float32)  # no zero: strict maxima
    model = net.model(net.op("MaxPool", y, kernel_shape=[2, 2], strides=[2, 2]))
    want = np.log(4 * np.abs(net.inits["W0"].astype(np.float64)))
    assert_log_scores_equal(prune_scores(model)["W0"], want, "W0")


def _maxpool_as_selection(
    net: Net,
    y: str,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    out_shape: Shape,
) -> str:
    """The reference of MaxPool on the linearized graph: a fixed 0/1 selection of the first
    maximal input of each window (row-major), chosen on the flow at |W|, as a MatMul."""
    f = net.value(y).astype(np.float64)
    n, c, h, w = f.shape
    ho, wo = out_shape[2:]
    big = np.full(
        (n, c, h + pads[0] + pads[2] + kernel[0], w + pads[1] + pads[3] + kernel[1]), -np.inf
    )
    big[:, :, pads[0] : pads[0] + h, pads[1] : pads[1] + w] = f
    sel = np.zeros((n * c * h * w, n * c * ho * wo), np.float32)
    for b, ch, i, j in np.ndindex(n, c, ho, wo):
        win = big[
            b,
            ch,
            i * strides[0] : i * strides[0] + kernel[0],
            j * strides[1] : j * strides[1] + kernel[1],
        ]
        di, dj = np.unravel_index(int(np.argmax(win)), win.shape)
        src = np.ravel_multi_index(
            (b, ch, i * strides[0] + di - pads[0], j * strides[1] + dj - pads[1]), f.shape
        )
        sel[src, np.ravel_multi_index((b, ch, i, j), (n, c, ho, wo))] = 1.0
    flat = net.op("Reshape", y, net.ints([1, -1]))
    return net.op(
        "Reshape", net.op("MatMul", flat, net.const(sel, "sel")), net.ints(list(out_shape))
    )


MAXPOOL_CASES = {
    "2x2_s2": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "3x3_s1_pad1": dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "3x3_s2_pad1": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "3x3_s2_ceil": dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "2x3_asym_pads": dict(kernel_shape=[2, 3], pads=[0, 1, 1, 0]),
}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", list(MAXPOOL_CASES))
def test_maxpool_after_weight(case: str, batch: int) -> None:
    attrs = MAXPOOL_CASES[case]

    def build(net: Net) -> onnx.ModelProto:
        # Ties in the flow (equal interior outputs) have equal gradients: harmless.
        y = net.conv("x", 3, (3, 3), pads=[0, 1, 1, 0])
        pooled = net.op("MaxPool", y, **attrs)
        if net.ref:
            pooled = _maxpool_as_selection(
                net,
                y,
                attrs["kernel_shape"],
                attrs.get("strides", [1, 1]),
                attrs.get("pads", [0, 0, 0, 0]),
                net.shape(pooled),
            )
        return net.model(net.post(pooled))

    net = Net((batch, 2, 7, 7), ref=False, seed=1)
    model = build(net)
    reference = build(Net((batch, 2, 7, 7), ref=True, seed=1))
    got = prune_scores(model)
    assert sorted(got) == ["W0", "W1"]
    for name in got:
        assert_log_scores_equal(got[name], brute_force_log_scores(reference, name), name)
