"""Flow rules of selection: ReduceMax/ReduceMin/ReduceL1, Where, TopK, Hardmax.

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
    check,
    check_linear_op,
)

# ---- reductions ------------------------------------------------------------------------------


def selection_reference(net: Net, y: str, choose: Callable[[np.ndarray], np.ndarray], shape):
    """A fixed 0/1 selection (out element o takes input `choose(f)[o]`, chosen on the flow
    `f` at |W|) as one MatMul: the linearization of max-like ops at that point."""
    f = net.value(y)
    src = choose(f).reshape(-1)
    sel = np.zeros((f.size, src.size), np.float32)
    sel[src, np.arange(src.size)] = 1.0
    flat = net.op("Reshape", y, net.ints([1, -1]))
    return net.op("Reshape", net.op("MatMul", flat, net.const(sel, "sel")), net.ints(list(shape)))


def _first_extreme(axes: list[int], largest: bool) -> Callable[[np.ndarray], np.ndarray]:
    def choose(f: np.ndarray) -> np.ndarray:
        kept = [i for i in range(f.ndim) if i not in axes]
        perm = kept + axes
        rows = int(np.prod([f.shape[i] for i in kept]))
        ft = f.transpose(perm).reshape(rows, -1)
        idx = np.arange(f.size).reshape(f.shape).transpose(perm).reshape(rows, -1)
        win = ft.argmax(1) if largest else ft.argmin(1)  # first on ties
        return idx[np.arange(rows), win]

    return choose


REDUCE_CASES = {
    "max_hw_keepdims1": ("ReduceMax", [2, 3], 1),
    "max_channels_keepdims0": ("ReduceMax", [1], 0),
    "max_c_and_w_keepdims0": ("ReduceMax", [1, 3], 0),
    "max_negative_axis": ("ReduceMax", [-1], 1),
    "min_hw_keepdims0": ("ReduceMin", [2, 3], 0),
    "min_channels_keepdims1": ("ReduceMin", [1], 1),
    "max_all": ("ReduceMax", None, 0),
    "min_all_keepdims1": ("ReduceMin", None, 1),
}


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("case", list(REDUCE_CASES))
def test_reduce_max_min(case: str, opset: int) -> None:
    op_type, axes, keepdims = REDUCE_CASES[case]

    def build(net: Net) -> onnx.ModelProto:
        y = net.conv("x", 3, (3, 3), pads=[0, 1, 1, 0])  # (1, 3, 6, 6), varied borders
        if axes is None:
            z = net.op(op_type, y, keepdims=keepdims)
        elif opset >= 18:
            z = net.op(op_type, y, net.ints(axes), keepdims=keepdims)
        else:
            z = net.op(op_type, y, axes=axes, keepdims=keepdims)
        if net.ref:
            norm = list(range(4)) if axes is None else sorted(a % 4 for a in axes)
            z = selection_reference(
                net, y, _first_extreme(norm, op_type == "ReduceMax"), net.shape(z)
            )
        return net.model(net.post(z) if len(net.shape(z)) >= 2 else z)

    check(build, (1, 2, 6, 6), opset=opset)


@pytest.mark.parametrize("opset", [17, 18])
def test_reduce_l1(opset: int) -> None:
    def op(net: Net, y: str) -> str:
        if opset >= 18:
            return net.op("ReduceL1", y, net.ints([1, 3]), keepdims=0)
        return net.op("ReduceL1", y, axes=[1, 3], keepdims=0)

    check_linear_op(op, opset=opset)


# ---- selection -------------------------------------------------------------------------------


def test_where_flow_or_bias() -> None:
    """Where(cond, flow, bias): flow where cond holds, nothing elsewhere (a bias)."""
    cond = np.random.default_rng(5).random((1, 1, 6, 6)) < 0.5
    check_linear_op(lambda net, y: net.op("Where", net.const(cond), y, net.bias((1, 3, 1, 1))))
    check_linear_op(lambda net, y: net.op("Where", net.const(cond), net.bias(()), y))


def test_where_output_larger_than_flow() -> None:
    """The constant branch broadcasts the output beyond the flow's shape."""
    cond = np.random.default_rng(6).random((1, 1, 2, 5)) < 0.5

    def op(net: Net, y: str) -> str:
        pooled = net.op("GlobalAveragePool", y)  # (1, 3, 1, 1)
        return net.op("Where", net.const(cond), pooled, net.bias((1, 3, 2, 5)))

    check_linear_op(op)


def test_where_two_flows() -> None:
    """Where(cond, a, b) with flows on both sides: linear in each weight as it is."""
    cond = np.random.default_rng(7).random((6,)) < 0.5

    def build(net: Net) -> onnx.ModelProto:
        a = net.pad_conv("x", 3)
        b = net.pad_conv(net.pad_conv("x", 3), 3)
        return net.model(net.post(net.op("Where", net.const(cond), a, b)))

    check(build, (1, 2, 6, 6))


TOPK_CASES = {
    "largest_last_axis": (dict(axis=-1), 3, "matmul"),
    "smallest": (dict(axis=-1, largest=0), 2, "matmul"),
    "unsorted": (dict(axis=-1, sorted=0), 4, "matmul"),
    "largest_channels": (dict(axis=1), 2, "conv"),
}


@pytest.mark.parametrize("case", list(TOPK_CASES))
def test_topk_values(case: str) -> None:
    attrs, k, pre = TOPK_CASES[case]
    x_shape = (1, 2, 6) if pre == "matmul" else (1, 2, 6, 6)

    def build(net: Net) -> onnx.ModelProto:
        if pre == "matmul":  # distinct values along the last axis
            y = net.op("MatMul", "x", net.weight((6, 8)))
        else:
            y = net.conv("x", 5, (3, 3), pads=[0, 1, 1, 0])
        # Unsorted values come in an order of onnxruntime's choosing: sum them.
        post = net.post if attrs.get("sorted", 1) else lambda z: net.op("ReduceSum", z)
        if not net.ref:
            z = net.op("TopK", y, net.ints([k]), n_out=2, **attrs)[0]
            return net.model(post(z))
        f = net.value(y)
        axis = attrs["axis"] % f.ndim
        order = np.argsort(-f if attrs.get("largest", 1) else f, axis=axis, kind="stable")
        idx = np.take(order, np.arange(k), axis=axis)
        z = net.op("GatherElements", y, net.ints(idx), axis=axis)
        return net.model(post(z))

    check(build, x_shape)


def test_topk_indices_carry_no_flow() -> None:
    """The indices feed a Gather of another branch: a selection, no path from the TopK input."""

    def build(net: Net) -> onnx.ModelProto:
        y = net.op("MatMul", "x", net.weight((6, 8)))  # (1, 2, 8)
        other = net.op("MatMul", "x", net.weight((6, 8)))
        if net.ref:
            f = net.value(y)
            idx = np.argsort(-f, axis=-1, kind="stable")[..., :3]
            picked = net.op("GatherElements", other, net.ints(idx), axis=2)
            # y itself reaches no output: keep W0 in the graph with zero flow.
            picked = net.op("Add", picked, net.op("Mul", net.op("ReduceSum", y), net.const(0.0)))
        else:
            _, idx = net.op("TopK", y, net.ints([3]), n_out=2, axis=-1)
            picked = net.op("GatherElements", other, idx, axis=2)
        return net.model(net.post(picked))

    check(build, (1, 2, 6))


def test_hardmax_ends_the_flow() -> None:
    """Hardmax's one-hot output is data about the flow: its branch adds nothing to R."""

    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        side = net.pad_conv(y, 2)
        # Reference: the branch with zero flow (its weight keeps a zero score).
        side = net.op("Mul", side, net.const(0.0)) if net.ref else net.op("Hardmax", side, axis=1)
        return net.model(net.post(y), side)

    check(build, (1, 2, 6, 6))
