"""Flow rules of MaxPool (flow to the first maximal input) and MaxUnpool.

The method (one-hot weights through onnxruntime on a hand-written positive linearization of
each model, or float64 references where R is not linear in a weight) is in tests/rulecheck.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from rulecheck import (
    Net,
    Shape,
    assert_log_scores_equal,
    brute_force_log_scores,
    prune_scores,
)

import onnxflow


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


def test_max_unpool_only_moves_flow() -> None:
    def build(unpool: bool) -> onnx.ModelProto:
        net = Net((1, 2, 6, 6), ref=False, seed=4)
        y = net.pad_conv("x", 3)
        p, idx = net.op("MaxPool", y, n_out=2, kernel_shape=[2, 2], strides=[2, 2])
        if unpool:
            p = net.op("MaxUnpool", p, idx, kernel_shape=[2, 2], strides=[2, 2])
        return net.model(net.op("ReduceSum", p, net.ints([2, 3]), keepdims=0))

    a, b = onnxflow.score(build(True)), onnxflow.score(build(False))
    assert a.log_flow == pytest.approx(b.log_flow, abs=1e-6)
    np.testing.assert_allclose(a.log_scores["W0"], b.log_scores["W0"], atol=1e-6)
