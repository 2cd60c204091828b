"""Flow rules of index-mapped data movement (Trilu, GatherND, ScatterND, Col2Im, GatherElements,
CumSum...), more pass-through ops, and ops that end the flow.

The method (one-hot weights through onnxruntime on a hand-written positive linearization of
each model, or float64 references where R is not linear in a weight) is in tests/rulecheck.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper
from rulecheck import (
    Net,
    Op,
    check,
    check_linear_op,
    prune_scores,
)

import onnxflow


def test_gather_elements() -> None:
    idx = np.random.default_rng(8).integers(-6, 6, size=(1, 3, 4, 6))  # repeats, negatives
    check_linear_op(lambda net, y: net.op("GatherElements", y, net.ints(idx), axis=2))
    idx = np.random.default_rng(9).integers(0, 3, size=(1, 5, 6, 6))
    check_linear_op(lambda net, y: net.op("GatherElements", y, net.ints(idx), axis=1))


@pytest.mark.parametrize(
    ("axis", "attrs"),
    [(2, {}), (-1, dict(exclusive=1)), (1, dict(reverse=1)), (3, dict(exclusive=1, reverse=1))],
)
def test_cumsum(axis: int, attrs: dict[str, Any]) -> None:
    check_linear_op(lambda net, y: net.op("CumSum", y, net.ints(axis), **attrs))


def _ints(net: Net, v: Any) -> str:
    return net.ints(v)


def _col2im(image: list[int], **attrs: Any) -> Op:
    def op(net: Net, y: str) -> str:
        c = net.shape(y)[1]
        cols = net.op("Reshape", y, net.ints([1, c * 4, 9]))
        return net.op("Col2Im", cols, net.ints(image), net.ints([2, 2]), **attrs)

    return op


def _scatter_nd(net: Net, y: str) -> str:
    upd = net.op("Reshape", net.pad_conv("x", 2), net.ints([2, 6, 6]))
    return net.op("ScatterND", y, net.ints([[0, 0], [0, 2]]), upd)


def _scatter_nd_add_const_updates(net: Net, y: str) -> str:
    upd = net.bias((2, 6, 6))
    return net.op("ScatterND", y, net.ints([[0, 0], [0, 0]]), upd, reduction="add")


def _scatter_elements(net: Net, y: str) -> str:
    upd = net.op("Slice", net.pad_conv("x", 3), net.ints([0]), net.ints([1]), net.ints([1]))
    idx = np.tile(np.array([2, 0, 1, 2, 0, 1], np.int64), (1, 1, 6, 1))
    return net.op("ScatterElements", y, net.ints(idx), upd, axis=1)


LINEAR_OPS: dict[str, Op] = {
    "trilu_upper": lambda net, y: net.op("Trilu", y),
    "trilu_lower_k1": lambda net, y: net.op("Trilu", y, net.ints(1), upper=0),
    "reverse_sequence": lambda net, y: net.op(
        "ReverseSequence", y, net.ints([2]), batch_axis=0, time_axis=1
    ),
    "center_crop_pad": lambda net, y: net.op("CenterCropPad", y, net.ints([1, 3, 4, 8])),
    "compress_axis2": lambda net, y: net.op(
        "Compress", y, net.const(np.array([1, 0, 1, 1, 0, 1], bool)), axis=2
    ),
    "gather_nd": lambda net, y: net.op("GatherND", y, net.ints([[0, 1], [0, 2], [0, 1]])),
    "gather_nd_points": lambda net, y: net.op(
        "GatherND", y, net.ints([[0, 1, 2, 3], [0, 0, 5, 5]])
    ),
    "scatter_nd": _scatter_nd,
    "scatter_nd_add_bias": _scatter_nd_add_const_updates,
    "scatter_elements": _scatter_elements,
    "col2im_overlapping": _col2im([4, 4]),
    "col2im_stride2_pads": _col2im([5, 5], strides=[2, 2], pads=[1, 1, 1, 1]),
    "col2im_dilation2": _col2im([5, 5], dilations=[2, 2]),
    "reduce_log_sum_exp": lambda net, y: net.op(
        "ReduceSum" if net.ref else "ReduceLogSumExp", y, net.ints([2]), keepdims=1
    ),
}


@pytest.mark.parametrize("case", list(LINEAR_OPS))
def test_data_movement_ops(case: str) -> None:
    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        z = LINEAR_OPS[case](net, y)
        return net.model(net.post(z) if len(net.shape(z)) >= 2 else z)

    check(build, (1, 2, 6, 6), opset=18)


@pytest.mark.parametrize(
    "op, attrs",
    [
        ("Sin", {}),
        ("Atan", {}),
        ("Shrink", {"lambd": 0.1}),
        ("LpNormalization", {"axis": 1}),
        ("MeanVarianceNormalization", {}),
    ],
)
def test_more_pass_through_ops(op: str, attrs: dict[str, Any]) -> None:
    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        z = y if net.ref else net.op(op, y, **attrs)
        return net.model(net.post(z))

    check(build, (1, 2, 6, 6), opset=18)


def test_sign_ends_the_flow() -> None:
    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        return net.model(net.post(y), net.op("Sign", y))

    net = Net((1, 2, 6, 6), ref=False)
    got = prune_scores(build(net))
    ref = build(Net((1, 2, 6, 6), ref=True))
    ref.graph.output.pop()  # the sign output carries no flow
    from rulecheck import assert_log_scores_equal, brute_force_log_scores

    for name in ("W0", "W1"):
        assert_log_scores_equal(got[name], brute_force_log_scores(ref, name), name)


def test_index_mapped_op_onnxruntime_cannot_run_is_one_line() -> None:
    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        z = net.op("ReverseSequence", y, net.ints([2]), batch_axis=0, time_axis=1)
        return net.model(net.post(z))

    m = build(Net((1, 2, 6, 6), ref=False))
    for n in m.graph.node:
        if n.op_type == "ReverseSequence":
            del n.attribute[:]
            n.attribute.extend([helper.make_attribute("batch_axis", 1)])
            n.attribute.extend([helper.make_attribute("time_axis", 1)])
    with pytest.raises(onnxflow.OnnxflowError) as err:
        onnxflow.score(m)
    assert "\n" not in str(err.value) and "ReverseSequence" in str(err.value), err.value
    assert "index data" in str(err.value)


def _with_empty_slice(empty: bool) -> onnx.ModelProto:
    """x -> MatMul a -> h; h's empty tail slice (phi3's rotary pass-through part at full
    rotary width) concatenated back onto h; -> MatMul b -> y. Without `empty`, no slice."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {
        "a": rng.normal(size=(4, 4)).astype(np.float32),
        "b": rng.normal(size=(4, 3)).astype(np.float32),
        "lo": np.array([4], np.int64),
        "hi": np.array([8], np.int64),
        "ax": np.array([2], np.int64),
    }
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h"])]
    if empty:
        nodes += [
            helper.make_node("Slice", ["h", "lo", "hi", "ax"], ["tail"]),
            helper.make_node("Concat", ["h", "tail"], ["hc"], axis=2),
            helper.make_node("MatMul", ["hc", "b"], ["y"]),
        ]
    else:
        nodes.append(helper.make_node("MatMul", ["h", "b"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "empty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_an_empty_slice_carries_no_flow_and_breaks_nothing() -> None:
    """An empty tensor on the flow path (reshaped on the way: a 0 in Reshape's shape means
    "copy this dimension") scores as if it were not there."""
    got = prune_scores(_with_empty_slice(True))
    want = prune_scores(_with_empty_slice(False))
    assert sorted(got) == sorted(want) == ["a", "b"]
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5)
