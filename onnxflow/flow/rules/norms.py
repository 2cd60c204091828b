"""Norms and other nonlinear reductions: ReduceL2, ReduceSumSquare, ReduceLogSum(Exp), LpPool,
GlobalLpPool, and the normalizations LpNormalization and MeanVarianceNormalization.

An Lp norm of a non-negative flow is homogeneous of degree 1, like a max: it acts as it is
(the unit is kept) and its transpose is its gradient, `(x / y)^(p-1)` for each input of the
norm y, as ReduceMax sends flow to its winner. ReduceSumSquare is degree 2: units add, the
transpose is `2x`. Log and exp pass flow like every pointwise activation, so ReduceLogSum and
ReduceLogSumExp are ReduceSum. A normalization divides by a statistic of its input, which is
not a weight: LpNormalization and MeanVarianceNormalization pass flow (as LayerNormalization
with a unit scale does).
"""

from __future__ import annotations

from onnxflow.flow.builder import _F32_TINY, Flow, FlowBuilder
from onnxflow.flow.conv import conv_pads
from onnxflow.flow.registry import FlowRule, flow_rule, register_flow_rule
from onnxflow.flow.rules.elementwise import PassThrough
from onnxflow.flow.rules.pooling import _reduce_axes, window_sum_back

register_flow_rule("LpNormalization", PassThrough)
register_flow_rule("MeanVarianceNormalization", PassThrough)


def _safe(g: FlowBuilder, t: str) -> str:
    return g.node("Max", [t, g.f32(_F32_TINY)])


def _ratio_power(g: FlowBuilder, x: str, y: str, p: float) -> str:
    """(x / y)^(p-1), y broadcast to x; 0 where x is 0."""
    r = g.node("Div", [x, _safe(g, y)])
    return r if p == 2 else g.node("Pow", [r, g.f32(p - 1.0)])


def _kept(x: Flow, axes: list[int]) -> tuple[int, ...]:
    return tuple(1 if i in axes else d for i, d in enumerate(x.shape))


@flow_rule("ReduceL2")
class ReduceL2(FlowRule):
    """The L2 norm as it is; back: gy * x / y."""

    def forward(self, g, node, x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        ax = node.saved["axes"] = _reduce_axes(x, axes, noop_with_empty_axes)
        if not ax:
            return x
        y = g.reduce("ReduceL2", x.tensor, ax, keepdims=1)
        node.saved["y"] = y
        return g.like(y if keepdims else g.reshape(y, node.out_shapes[0]), x)

    def backward(self, g, node, grads, x, axes=None, **attrs):
        ax, (gy,) = node.saved["axes"], grads
        if not ax:
            return [gy, None]
        kept = _kept(x, ax)
        spread = g.expand_to(g.reshape(gy.tensor, list(kept)), kept, x.shape)
        ratio = _ratio_power(g, x.tensor, node.saved["y"], 2.0)
        return [g.like(g.node("Mul", [spread, ratio]), gy), None]


@flow_rule("ReduceSumSquare")
class ReduceSumSquare(FlowRule):
    """Sum of squares: degree 2 (units add); back: 2 x gy."""

    rescales = True

    def forward(self, g, node, x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        ax = node.saved["axes"] = _reduce_axes(x, axes, noop_with_empty_axes)
        sq = g.node("Mul", [x.tensor, x.tensor])
        t = g.reduce("ReduceSum", sq, ax, keepdims=keepdims) if ax else sq
        return Flow(t, g.scale_sum(x.scale, x.scale))

    def backward(self, g, node, grads, x, axes=None, **attrs):
        ax, (gy,) = node.saved["axes"], grads
        kept = _kept(x, ax)
        spread = g.expand_to(g.reshape(gy.tensor, list(kept)), kept, x.shape) if ax else gy.tensor
        t = g.node("Mul", [spread, g.node("Mul", [x.tensor, g.f32(2.0)])])
        return [Flow(t, g.scale_sum(gy.scale, x.scale)), None]


@flow_rule("ReduceLogSum", "ReduceLogSumExp")
class ReduceLogSum(FlowRule):
    """log and exp pass flow: a ReduceSum."""

    def forward(self, g, node, x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        ax = node.saved["axes"] = _reduce_axes(x, axes, noop_with_empty_axes)
        if not ax:
            return x
        return g.like(g.reduce("ReduceSum", x.tensor, ax, keepdims), x)

    def backward(self, g, node, grads, x, axes=None, **attrs):
        ax, (gy,) = node.saved["axes"], grads
        if not ax:
            return [gy, None]
        kept = _kept(x, ax)
        return [g.like(g.expand_to(g.reshape(gy.tensor, list(kept)), kept, x.shape), gy), None]


@flow_rule("GlobalLpPool")
class GlobalLpPool(FlowRule):
    """The Lp norm over each channel's map, as it is; back: gy (x / y)^(p-1)."""

    def forward(self, g, node, x, *, p=2):
        y = g.node("GlobalLpPool", [x.tensor], p=int(p))
        node.saved["y"] = y
        return g.like(y, x)

    def backward(self, g, node, grads, x, *, p=2):
        (gy,) = grads
        t = g.expand_to(gy.tensor, node.out_shapes[0], x.shape)
        ratio = _ratio_power(g, x.tensor, node.saved["y"], float(p))
        return [g.like(g.node("Mul", [t, ratio]), gy)]


@flow_rule("LpPool")
class LpPool(FlowRule):
    """The Lp norm of each window, as it is; back: x^(p-1) * ConvTranspose_ones(gy / y^(p-1)),
    the gradient summed over the windows an input lies in."""

    def forward(self, g, node, x, **attrs):
        y = g.node("LpPool", [x.tensor], **attrs)
        node.saved["y"] = y
        return g.like(y, x)

    def backward(
        self,
        g,
        node,
        grads,
        x,
        *,
        auto_pad="NOTSET",
        ceil_mode=0,
        dilations=None,
        kernel_shape=(),
        p=2,
        pads=None,
        strides=None,
    ):
        (gy,) = grads
        k = tuple(kernel_shape)
        nd = len(k)
        strides = list(strides or [1] * nd)
        dilations = list(dilations or [1] * nd)
        in_sp, out_sp = x.shape[2:], node.out_shapes[0][2:]
        pad = conv_pads(in_sp, k, strides, dilations, pads, auto_pad)
        y = _safe(g, node.saved["y"])
        scaled = g.node("Div", [gy.tensor, y if p == 2 else g.node("Pow", [y, g.f32(p - 1.0)])])
        t = window_sum_back(g, scaled, x, k, strides, dilations, pad[:nd], out_sp)
        xp = x.tensor if p == 2 else g.node("Pow", [x.tensor, g.f32(p - 1.0)])
        return [g.like(g.node("Mul", [t, xp]), gy)]
