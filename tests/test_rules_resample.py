"""Flow rules of Resize / Upsample and the space/depth moves.

The method (one-hot weights through onnxruntime on a hand-written positive linearization of
each model, or float64 references where R is not linear in a weight) is in tests/rulecheck.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from rulecheck import (
    Net,
    Op,
    check_linear_op,
    prune_scores,
)

import onnxflow
from onnxflow.flow.rules import resample


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
