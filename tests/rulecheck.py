"""The brute-force harness of the flow-rule tests (tests/test_rules_*.py): onnxflow's dense
SynFlow scores against brute force.

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


Op = Callable[[Net, str], str]


def dense_reference(net: Net, y: str, op: Op) -> str:
    """The positive linearization of a linear op applied to `y`: |its matrix|, read off
    onnxruntime one input element at a time (no separability assumed), as one MatMul."""
    shape = net.shape(y)
    sub = Net(shape, ref=True, opset=net.opset)
    sub.rng = net.rng  # what the op draws (biases) is drawn as in the model
    sess = _session(sub._model([op(sub, "x")], [None]))
    size = int(np.prod(shape))
    zero = sess.run(None, {"x": np.zeros(shape, np.float32)})[0].astype(np.float64)
    cols = []
    for i in range(size):
        onehot = np.zeros(size, np.float32)
        onehot[i] = 1.0
        out = sess.run(None, {"x": onehot.reshape(shape)})[0].astype(np.float64)
        cols.append((out - zero).ravel())
    mat = np.abs(np.stack(cols, axis=1))  # (out, in)
    flat = net.op("Reshape", y, net.ints([1, -1]))
    z = net.op("MatMul", flat, net.const(mat.T, "dense"))
    return net.op("Reshape", z, net.ints(list(zero.shape)))


def check_linear_op(
    op: Op, x_shape: Shape = (1, 2, 6, 6), opset: int = OPSET, channels: int = 3
) -> None:
    """A weight before the op (checks its backward rule) and after it (its forward rule);
    the reference replaces the op by its dense positive matrix."""

    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", channels)
        z = dense_reference(net, y, op) if net.ref else op(net, y)
        return net.model(net.post(z) if len(net.shape(z)) >= 2 else z)

    check(build, x_shape, opset=opset)


def central_log_scores(a: np.ndarray, f: Callable[[np.ndarray], float]) -> np.ndarray:
    grad = np.zeros(a.size)
    for e in range(a.size):
        step = np.zeros(a.size)
        step[e] = 1e-4
        grad[e] = (f(a + step.reshape(a.shape)) - f(a - step.reshape(a.shape))) / 2e-4
    with np.errstate(divide="ignore"):
        return np.log(a.ravel() * grad).reshape(a.shape)


# ---- a weight sandwich: x -> MatMul w1 -> [middle] -> MatMul w2 (test_linearize, normalization)

RNG = np.random.default_rng(11)
W1 = RNG.normal(size=(8, 8)).astype(np.float32)
W2 = RNG.normal(size=(8, 3)).astype(np.float32)
GAMMA = RNG.normal(size=(8,)).astype(np.float32)
BETA = RNG.normal(size=(8,)).astype(np.float32)


def model(middle: list[onnx.NodeProto], extra: dict[str, np.ndarray], opset: int = 17):
    """x(1,4,8) -> MatMul W1 -> h -> [middle] -> n -> MatMul W2 -> y(1,4,3)."""
    inits = {"w1": W1, "w2": W2, "gamma": GAMMA, "beta": BETA, **extra}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        *middle,
        helper.make_node("MatMul", ["n", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def assert_same_scores(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    sa, sb = onnxflow.score(a), onnxflow.score(b)
    assert sa.log_flow == pytest.approx(sb.log_flow, abs=1e-5)
    for name in ("w1", "w2"):
        np.testing.assert_allclose(sa.log_scores[name], sb.log_scores[name], atol=1e-5)
