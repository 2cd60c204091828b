"""Pooling and reductions act as they are; their transposes route flow back.

MaxPool's transpose sends each output's flow to the input that won the max (the first one on
ties, as onnxruntime's indices and PyTorch's autograd both do). Average pools and means are
linear: their transpose spreads flow uniformly over each window.
"""

from __future__ import annotations

import numpy as np

from onnxflow.flow.builder import Const, Flow, FlowBuilder
from onnxflow.flow.conv import conv_pads
from onnxflow.flow.registry import FlowRule, flow_rule


@flow_rule("MaxPool")
class MaxPool(FlowRule):
    flow_outputs = 1  # the indices are data
    channel_units = True  # within each channel: per-channel units pass

    def forward(self, g, node, x, **attrs):
        if not x.needs_grad and len(node.out_shapes) < 2:
            return [g.like(g.node("MaxPool", [x.tensor], **attrs), x), None]
        y, idx = g.node("MaxPool", [x.tensor], n_out=2, **attrs)
        node.saved["indices"] = idx
        # the indices output (for MaxUnpool) is data: the winners chosen on the flow
        return [g.like(y, x), Const(idx, node.out_shapes[1]) if len(node.out_shapes) > 1 else None]

    def backward(self, g, node, grads, x, **attrs):
        gy = grads[0]
        size = int(np.prod(x.shape))
        flat = g.node(
            "ScatterElements",
            [g.zeros((size,)), g.reshape(node.saved["indices"], [-1]), g.reshape(gy.tensor, [-1])],
            reduction="add",
        )
        return [g.like(g.reshape(flat, list(x.shape)), gy)]


def _inverse_divisor(
    in_len: int, out_len: int, k: int, s: int, d: int, pb: int, pe: int, include_pad: bool
) -> np.ndarray:
    """1 / (number of elements averaged) for each output position along one axis."""
    starts = np.arange(out_len) * s - pb
    taps = starts[:, None] + np.arange(k)[None, :] * d
    if include_pad:
        count = (taps < in_len + pe).sum(axis=1)
    else:
        count = ((taps >= 0) & (taps < in_len)).sum(axis=1)
    return 1.0 / np.maximum(count, 1)


@flow_rule("AveragePool")
class AveragePool(FlowRule):
    channel_units = True

    def forward(self, g, node, x, **attrs):
        return g.like(g.node("AveragePool", [x.tensor], **attrs), x)

    def backward(
        self,
        g,
        node,
        grads,
        x,
        *,
        auto_pad="NOTSET",
        ceil_mode=0,
        count_include_pad=0,
        dilations=None,
        kernel_shape=(),
        pads=None,
        strides=None,
    ):
        (gy,) = grads
        k = tuple(kernel_shape)
        nd = len(k)
        strides = list(strides or [1] * nd)
        dilations = list(dilations or [1] * nd)
        in_sp, out_sp = x.shape[2:], node.out_shapes[0][2:]
        p = conv_pads(in_sp, k, strides, dilations, pads, auto_pad)
        inv = np.ones((), np.float64)
        for i in range(nd):
            axis = _inverse_divisor(
                in_sp[i],
                out_sp[i],
                k[i],
                strides[i],
                dilations[i],
                p[i],
                p[nd + i],
                bool(count_include_pad),
            )
            inv = np.multiply.outer(inv, axis)
        scaled = g.node("Mul", [gy.tensor, g.f32(inv.reshape((1, 1, *out_sp)), "inv_count")])
        t = window_sum_back(g, scaled, x, k, strides, dilations, p[:nd], out_sp)
        return [g.like(t, gy)]


def window_sum_back(
    g: FlowBuilder,
    t: str,
    x: Flow,
    k: tuple[int, ...],
    strides: list[int],
    dilations: list[int],
    begins: list[int],
    out_sp: tuple[int, ...],
) -> str:
    """Transpose of a per-channel sum over pooling windows: each output's value goes back to
    every input position of its window (a depthwise ConvTranspose with a kernel of ones)."""
    from onnxflow.flow.conv import conv_transpose_full

    c = x.shape[1]
    ones = g.f32(np.ones((c, 1, *k)), "ones_kernel")
    return conv_transpose_full(
        g,
        t,
        ones,
        group=c,
        strides=strides,
        dilations=dilations,
        begins=begins,
        in_sp=out_sp,
        k=k,
        want=x.shape[2:],
    )


def _spread(g: FlowBuilder, gy: Flow, kept_shape: tuple[int, ...], x: Flow, mean: bool) -> Flow:
    """Transpose of a sum/mean reduction: broadcast back to the input shape."""
    t = g.expand_to(g.reshape(gy.tensor, list(kept_shape)), kept_shape, x.shape)
    if mean:
        count = int(np.prod(x.shape)) // max(1, int(np.prod(kept_shape)))
        t = g.node("Mul", [t, g.f32(1.0 / count)])
    return g.like(t, gy)


@flow_rule("GlobalAveragePool")
class GlobalAveragePool(FlowRule):
    channel_units = True

    def forward(self, g, node, x):
        return g.like(g.node("GlobalAveragePool", [x.tensor]), x)

    def backward(self, g, node, grads, x):
        kept = (*x.shape[:2], *[1] * (len(x.shape) - 2))
        return [_spread(g, grads[0], kept, x, mean=True)]


def _reduce_axes(x: Flow, axes, noop_with_empty_axes: int) -> list[int]:
    """Axes as an input (opset 18+) or an attribute (before)."""
    if isinstance(axes, Const):
        axes = [] if axes.values is None else np.asarray(axes.values).reshape(-1).tolist()
    axes = [int(a) for a in (axes or [])]
    if not axes:
        return [] if noop_with_empty_axes else list(range(len(x.shape)))
    return sorted(a % len(x.shape) for a in axes)


@flow_rule("ReduceMean", "ReduceSum", "ReduceL1")
class Reduce(FlowRule):
    """Sums and means; ReduceL1 is ReduceSum on the (non-negative) flow. A reduction over
    the spatial axes only (a global pool spelled ReduceMean, as the dynamo exporter writes
    it) keeps each channel apart, so a per-channel unit passes; any other reduction mixes
    channels and takes the flow in one unit."""

    channel_units = True

    def forward(self, g, node, x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        ax = _reduce_axes(x, axes, noop_with_empty_axes)
        node.saved["axes"] = ax
        if not ax:
            return x
        op = "ReduceSum" if node.op_type == "ReduceL1" else node.op_type
        if x.per_channel and (0 in ax or 1 in ax):
            x = g.resolve(x)
        t = g.reduce(op, x.tensor, ax, keepdims)
        if x.per_channel and not keepdims:
            rank = len(x.shape) - len(ax)
            unit_shape = (1, x.shape[1], *[1] * (rank - 2))
            return Flow(t, g.unit_as(x, unit_shape), unit_shape=unit_shape)
        return g.like(t, x)

    def backward(self, g, node, grads, x, axes=None, **attrs):
        ax = node.saved["axes"]
        if not ax:
            return [grads[0], None]
        kept = tuple(1 if i in ax else d for i, d in enumerate(x.shape))
        return [_spread(g, grads[0], kept, x, mean=node.op_type == "ReduceMean"), None]


@flow_rule("GlobalMaxPool")
class GlobalMaxPool(FlowRule):
    """Like MaxPool over the whole map: each channel's flow goes back to its first maximum."""

    channel_units = True

    def forward(self, g, node, x):
        return g.like(g.node("GlobalMaxPool", [x.tensor]), x)

    def backward(self, g, node, grads, x):
        n, c = x.shape[:2]
        flat = g.reshape(x.tensor, [n, c, -1])
        winner = g.node("ArgMax", [flat], axis=2, keepdims=1, select_last_index=0)
        back = g.node(
            "ScatterElements",
            [
                g.zeros((n, c, int(np.prod(x.shape[2:])))),
                winner,
                g.reshape(grads[0].tensor, [n, c, 1]),
            ],
            axis=2,
        )
        return [g.like(g.reshape(back, list(x.shape)), grads[0])]


@flow_rule("ReduceMax", "ReduceMin")
class ReduceExtreme(FlowRule):
    """As they are forward; each output's flow goes back to the input that won (the first
    in row-major order over the reduced axes on ties), like MaxPool."""

    def forward(self, g, node, x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        ax = _reduce_axes(x, axes, noop_with_empty_axes)
        node.saved["axes"] = ax
        if not ax:
            return x
        return g.like(g.reduce(node.op_type, x.tensor, ax, keepdims), x)

    def backward(self, g, node, grads, x, axes=None, **attrs):
        ax = node.saved["axes"]
        (gy,) = grads
        if not ax:
            return [gy, None]
        kept = [i for i in range(len(x.shape)) if i not in ax]
        perm = kept + ax
        rows = int(np.prod([x.shape[i] for i in kept]))
        cols = int(np.prod([x.shape[i] for i in ax]))
        moved = [x.shape[p] for p in perm]
        xt = x.tensor if perm == sorted(perm) else g.node("Transpose", [x.tensor], perm=perm)
        arg = "ArgMax" if node.op_type == "ReduceMax" else "ArgMin"
        winner = g.node(arg, [g.reshape(xt, [rows, cols])], axis=1, keepdims=1)
        back = g.node(
            "ScatterElements",
            [g.zeros((rows, cols)), winner, g.reshape(gy.tensor, [rows, 1])],
            axis=1,
        )
        back = g.reshape(back, moved)
        if perm != sorted(perm):
            back = g.node("Transpose", [back], perm=[int(i) for i in np.argsort(perm)])
        return [g.like(back, gy), None]
