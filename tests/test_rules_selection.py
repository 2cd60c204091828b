"""Flow rules of resampling, space/depth moves, reductions, selection and Einsum, against
brute force (see test_rules.py for the method: one-hot weights through onnxruntime on a
hand-written positive linearization of each model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
from test_rules_linear import (
    OPSET,
    Net,
    Shape,
    _session,
    check,
    prune_scores,
)

import onnxflow
from onnxflow.flow.rules import resample

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


# ---- Resize / Upsample ----------------------------------------------------------------------


def _resize(scales=None, sizes=None, roi=None, **attrs: Any) -> Op:
    def op(net: Net, y: str) -> str:
        inputs = [
            net.const(np.asarray(roi, np.float32)) if roi is not None else "",
            net.const(np.asarray(scales, np.float32)) if scales is not None else "",
        ]
        if sizes is not None:
            inputs.append(net.ints(sizes))
        while inputs and inputs[-1] == "":
            inputs.pop()
        return net.op("Resize", y, *inputs, **attrs)

    return op


RESIZE_CASES: dict[str, tuple[Op, int]] = {
    "linear_half_pixel_x2": (_resize([1, 1, 2, 2], mode="linear"), 17),
    "linear_align_corners": (
        _resize([1, 1, 1.5, 2], mode="linear", coordinate_transformation_mode="align_corners"),
        17,
    ),
    "linear_asymmetric_down": (
        _resize([1, 1, 0.5, 0.7], mode="linear", coordinate_transformation_mode="asymmetric"),
        17,
    ),
    "linear_pytorch_half_pixel_sizes": (
        _resize(
            sizes=[1, 3, 1, 5], mode="linear", coordinate_transformation_mode="pytorch_half_pixel"
        ),
        17,
    ),
    "linear_half_pixel_symmetric": (
        _resize(
            [1, 1, 1.5, 0.8], mode="linear", coordinate_transformation_mode="half_pixel_symmetric"
        ),
        19,
    ),
    "linear_tf_crop_and_resize_extrapolation": (
        _resize(
            sizes=[1, 3, 5, 4],
            roi=[0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3],
            mode="linear",
            coordinate_transformation_mode="tf_crop_and_resize",
            extrapolation_value=7.0,
        ),
        17,
    ),
    "linear_antialias_down": (_resize([1, 1, 0.5, 0.4], mode="linear", antialias=1), 18),
    "linear_axes_keep_aspect_not_larger": (
        _resize(sizes=[9, 12], axes=[2, 3], mode="linear", keep_aspect_ratio_policy="not_larger"),
        18,
    ),
    "cubic_half_pixel_x2": (_resize([1, 1, 2, 2], mode="cubic"), 17),
    "cubic_align_corners_a05_sizes": (
        _resize(
            sizes=[1, 3, 8, 7],
            mode="cubic",
            cubic_coeff_a=-0.5,
            coordinate_transformation_mode="align_corners",
        ),
        17,
    ),
    "cubic_exclude_outside": (_resize([1, 1, 0.6, 1.7], mode="cubic", exclude_outside=1), 17),
    "cubic_antialias_down": (_resize([1, 1, 0.5, 0.5], mode="cubic", antialias=1), 18),
    "resize10_linear": (
        lambda net, y: net.op("Resize", y, net.const(np.float32([1, 1, 2, 1.5])), mode="linear"),
        10,
    ),
    "upsample9_linear": (
        lambda net, y: net.op("Upsample", y, net.const(np.float32([1, 1, 2, 2])), mode="linear"),
        9,
    ),
    "nearest_still_gathers": (_resize([1, 1, 2, 1.5], mode="nearest"), 17),
}


@pytest.mark.parametrize("case", list(RESIZE_CASES))
def test_resize(case: str) -> None:
    op, opset = RESIZE_CASES[case]
    check_linear_op(op, opset=opset)


def test_resize_linear_1d_and_3d() -> None:
    """Rank 3 (N, C, L) and rank 5 (trilinear) flows."""
    check_linear_op(_resize([1, 1, 2.5], mode="linear"), x_shape=(1, 2, 5))
    check_linear_op(_resize([1, 1, 2, 1, 1.5], mode="linear"), x_shape=(1, 2, 3, 4, 4))


def test_resize_refusal_is_one_line_naming_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the rule cannot build the matrices (here: an axis over the length limit) it
    refuses before any pruning, naming the node and the mode, as for an op with no rule."""
    monkeypatch.setattr(resample, "_MAX_AXIS", 4)
    net = Net((1, 2, 6, 6), ref=False)
    model = net.model(net.post(_resize([1, 1, 2, 2], mode="linear")(net, net.pad_conv("x", 3))))
    with pytest.raises(onnxflow.OnnxflowError, match=r"Resize mode 'linear' has no flow rule") as e:
        prune_scores(model)
    assert "\n" not in str(e.value)


# ---- DepthToSpace / SpaceToDepth -------------------------------------------------------------


@pytest.mark.parametrize(
    ("op_type", "channels", "attrs"),
    [
        ("DepthToSpace", 8, dict(blocksize=2)),
        ("DepthToSpace", 8, dict(blocksize=2, mode="CRD")),
        ("DepthToSpace", 9, dict(blocksize=3, mode="DCR")),
        ("DepthToSpace", 18, dict(blocksize=3, mode="CRD")),
        ("SpaceToDepth", 3, dict(blocksize=2)),
        ("SpaceToDepth", 2, dict(blocksize=3)),
    ],
)
def test_space_depth(op_type: str, channels: int, attrs: dict[str, Any]) -> None:
    check_linear_op(lambda net, y: net.op(op_type, y, **attrs), channels=channels)


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


def test_hardmax_ends_the_flow() -> None:
    """Hardmax's one-hot output is data about the flow: its branch adds nothing to R."""

    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        side = net.pad_conv(y, 2)
        # Reference: the branch with zero flow (its weight keeps a zero score).
        side = net.op("Mul", side, net.const(0.0)) if net.ref else net.op("Hardmax", side, axis=1)
        return net.model(net.post(y), side)

    check(build, (1, 2, 6, 6))


# ---- Einsum ----------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("equation", "message"),
    [("bij,jk->bik", "constant operand"), ("bii->bi", "diagonals")],
)
def test_einsum_refusals_are_one_line(equation: str, message: str) -> None:
    """A weight fed to an Einsum is not a prunable layer (refused, not silently kept);
    diagonals have no rule."""
    net = Net((2, 4, 4), ref=False)
    y = net.op("MatMul", "x", net.weight((4, 4)))
    if "jk" in equation:
        z = net.op("Einsum", y, net.const(net.signed((4, 3))), equation=equation)
    else:
        z = net.op("Einsum", y, equation=equation)
    model = net.model(net.post(z))
    with pytest.raises(onnxflow.OnnxflowError, match=message) as e:
        prune_scores(model)
    assert "\n" not in str(e.value) and "Einsum" in str(e.value)
