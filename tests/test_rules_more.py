"""Flow rules of resampling, space/depth moves, reductions, selection and Einsum, against
brute force (see test_rules.py for the method: one-hot weights through onnxruntime on a
hand-written positive linearization of each model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
from test_rules import (
    OPSET,
    Net,
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


def check_linear_op(op: Op, x_shape=(1, 2, 6, 6), opset: int = OPSET, pre: str = "conv") -> None:
    """A weight before the op (checks its backward rule) and after it (its forward rule)."""

    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3) if pre == "conv" else net.op("MatMul", "x", net.weight(pre))
        z = dense_reference(net, y, op) if net.ref else op(net, y)
        return net.model(net.post(z))

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
