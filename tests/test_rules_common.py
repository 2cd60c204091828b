"""Flow rules of the common ops between two weight layers: average pooling, reductions,
concatenation and reshapes, activations read as identity, linear arithmetic, BatchNormalization.

The method (one-hot weights through onnxruntime on a hand-written positive linearization of
each model, or float64 references where R is not linear in a weight) is in tests/rulecheck.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import pytest
from rulecheck import (
    Net,
    Op,
    Shape,
    check,
)

# Each op gets `y`, the (1, 3, 6, 6) output of a padded 3x3 conv, and a post-layer follows.


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
