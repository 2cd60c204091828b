"""Pointwise ops on the positive linearization.

Activations (and Softmax) pass flow unchanged: the paper's R is the sum over input-output
paths of products of |weights|, which no activation enters. Constant addends are biases and
are dropped; signs are dropped (Sub adds); a constant factor acts as its absolute value;
BatchNormalization is its positive per-channel scale |gamma| / sqrt(var + eps).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnxflow.errors import OnnxflowError
from onnxflow.flow.builder import Const, Flow, FlowBuilder, NodeContext
from onnxflow.flow.registry import FlowRule, flow_rule

# Elementwise functions of one tensor: in the positive linearization they pass flow.
POINTWISE = (
    "Identity", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Softplus", "Softsign", "Clip", "Gelu", "Mish", "ThresholdedRelu",
    "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Pow", "Abs", "Neg",
)  # fmt: skip


@flow_rule(*POINTWISE, "Dropout", "Softmax", "LogSoftmax", "LRN")
class PassThrough(FlowRule):
    """Output 0 carries the flow of input 0; extra outputs (Dropout's mask) carry none."""

    flow_outputs = 1
    channel_units = True

    def forward(self, g, node, x, *rest, **attrs):
        return [x] + [None] * (len(node.out_shapes) - 1)

    def backward(self, g, node, grads, x, *rest, **attrs):
        return [grads[0]] + [None] * len(rest)


@flow_rule("Cast")
class Cast(FlowRule):
    """A cast between float types keeps the flow (the flow model is float32 throughout); a
    cast to a non-float type ends it (the result is index or shape data)."""

    channel_units = True

    def forward(self, g, node, x, *, to, saturate=1):
        if np.issubdtype(helper.tensor_dtype_to_np_dtype(to), np.floating):
            return x
        return Const(g.node("Cast", [g.resolve(x).tensor], to=to), node.out_shapes[0])

    def backward(self, g, node, grads, x, *, to, saturate=1):
        return [grads[0]]


def _flows(inputs: tuple) -> list[tuple[int, Flow]]:
    return [(i, v) for i, v in enumerate(inputs) if isinstance(v, Flow)]


@flow_rule("Add", "Sub", "Sum", "Max", "Min", "Mean")
class Sum(FlowRule):
    """Flows add up (Max/Min/Mean of flows: their sum bounds them; they are rare on weight
    paths); constant operands are biases and carry no flow. Per-channel units broadcast."""

    channel_units = True

    def forward(self, g, node, *inputs, **attrs):
        out_shape = node.out_shapes[0]
        flows = [
            v if len(v.unit_shape) in (0, len(out_shape)) else g.resolve(v)
            for _, v in _flows(inputs)
        ]
        total = g.add(flows)
        shape = np.broadcast_shapes(*(f.shape for f in flows))
        return g.map(total, lambda t: g.expand_to(t, shape, out_shape))

    def backward(self, g, node, grads, *inputs, **attrs):
        (gy,) = grads
        out = node.out_shapes[0]
        return [
            g.map(gy, lambda t, v=v: g.reduce_to(t, out, v.shape))
            if isinstance(v, Flow) and v.needs_grad
            else None
            for v in inputs
        ]


def _abs_factor(g: FlowBuilder, c: Const, invert: bool = False) -> str:
    """|c| (or 1/|c|) as a flow-model tensor. A factor computed when the flow model runs (a
    mask or rotary table computed from integer inputs, a scale computed from shapes) takes
    the value the flow model computes, as Where's condition does."""
    if c.values is None:
        t = g.node("Cast", [g.node("Abs", [c.name])], to=TensorProto.FLOAT)
        return g.node("Reciprocal", [t]) if invert else t
    v = np.abs(np.asarray(c.values, dtype=np.float64))
    if invert:
        with np.errstate(divide="ignore"):
            v = 1.0 / v
    return g.f32(v, "factor")


@flow_rule("Mul", "Div")
class Mul(FlowRule):
    """x * c -> x * |c|, x / c -> x / |c|; the product of two flows multiplies their units.

    Division by a flow: `a / b` passes a's flow and gives b none (b normalizes a: a mean, a
    norm, the row sums of linear attention; a ratio is homogeneous of degree 0 in a common
    scale, so b's weights do not scale the output); `c / b` is |c| * Reciprocal(b), and
    Reciprocal passes flow like every pointwise activation."""

    channel_units = True  # per-channel units are resolved where flows multiply

    def forward(self, g, node, a, b):
        out = node.out_shapes[0]
        if node.op_type == "Div" and isinstance(b, Flow):
            # a / b: b is a normalizer (a statistic, a softmax or linear-attention
            # denominator); the ratio passes a's flow, b's branch gets none from it. c / b
            # (a constant over a flow) is |c| times Reciprocal(b), which passes b's flow.
            node.saved["ratio"] = True
            a, b = (g.resolve(v) if isinstance(v, Flow) else v for v in (a, b))
            if isinstance(a, Flow):
                return g.map(a, lambda t: g.expand_to(t, a.shape, out))
            node.saved["factor"] = f = _abs_factor(g, a)
            return g.map(b, lambda t: g.node("Mul", [t, f]))
        if isinstance(a, Flow) and isinstance(b, Flow):
            node.saved["pair"] = a, b = g.resolve(a), g.resolve(b)
            t = g.node("Mul", [a.tensor, b.tensor])
            return g.rescale(Flow(t, g.scale_sum(a.scale, b.scale)))
        x, c = (a, b) if isinstance(a, Flow) else (b, a)
        if len(x.unit_shape) not in (0, len(out)):
            x = g.resolve(x)
        node.saved["factor"] = f = _abs_factor(g, c, invert=node.op_type == "Div")
        return g.map(x, lambda t: g.node("Mul", [t, f]))

    def backward(self, g, node, grads, a, b):
        (gy,) = grads
        out = node.out_shapes[0]
        if node.saved.get("ratio"):
            if isinstance(a, Flow):
                back = g.map(gy, lambda t: g.reduce_to(t, out, a.shape))
                return [back if a.needs_grad else None, None]
            f = node.saved["factor"]
            return [None, g.map(gy, lambda t: g.reduce_to(g.node("Mul", [t, f]), out, b.shape))]
        if isinstance(a, Flow) and isinstance(b, Flow):
            a, b = node.saved["pair"]
            res: list[Flow | None] = []
            for me, other in ((a, b), (b, a)):
                if not me.needs_grad:
                    res.append(None)
                    continue
                t = g.reduce_to(g.node("Mul", [gy.tensor, other.tensor]), out, me.shape)
                res.append(g.rescale(Flow(t, g.scale_sum(gy.scale, other.scale))))
            return res
        f = node.saved["factor"]
        return [
            g.map(gy, lambda t, v=v: g.reduce_to(g.node("Mul", [t, f]), out, v.shape))
            if isinstance(v, Flow) and v.needs_grad
            else None
            for v in (a, b)
        ]


@flow_rule("BatchNormalization")
class BatchNormalization(FlowRule):
    """Positive per-channel scale |gamma| / sqrt(var + eps); mean and beta are shifts."""

    flow_outputs = 1  # training-mode running statistics carry none
    channel_units = True

    def _scale(self, g: FlowBuilder, node: NodeContext, x: Flow, gamma, var, epsilon: float):
        if "scale" not in node.saved:
            if (
                not isinstance(gamma, Const)
                or gamma.values is None
                or not isinstance(var, Const)
                or var.values is None
            ):
                raise OnnxflowError(
                    f"node {node.name!r}: BatchNormalization needs constant scale and variance"
                )
            s = np.abs(np.asarray(gamma.values, np.float64)) / np.sqrt(
                np.asarray(var.values, np.float64) + epsilon
            )
            shape = [1, -1] + [1] * (len(x.shape) - 2)
            node.saved["scale"] = g.f32(s.reshape(shape), "bn_scale")
        return node.saved["scale"]

    def forward(
        self,
        g,
        node,
        x,
        gamma,
        beta,
        mean,
        var,
        *,
        epsilon=1e-5,
        momentum=0.9,
        spatial=1,
        training_mode=0,
    ):
        s = self._scale(g, node, x, gamma, var, epsilon)
        return [g.map(x, lambda t: g.node("Mul", [t, s]))] + [None] * (len(node.out_shapes) - 1)

    def backward(self, g, node, grads, x, gamma, beta, mean, var, **attrs):
        s = node.saved["scale"]
        return [g.map(grads[0], lambda t: g.node("Mul", [t, s])), None, None, None, None]


@flow_rule("Scaler", domain="ai.onnx.ml")
class Scaler(FlowRule):
    """ai.onnx.ml Scaler, (x - offset) * scale: x * |scale| per feature (offset is a shift)."""

    def forward(self, g, node, x, *, offset=None, scale=None):
        s = np.abs(np.asarray(scale if scale is not None else [1.0], np.float32))
        node.saved["scale"] = f = g.f32(s, "scaler")
        return g.map(x, lambda t: g.node("Mul", [t, f]))

    def backward(self, g, node, grads, x, **attrs):
        f = node.saved["scale"]
        return [g.map(grads[0], lambda t: g.node("Mul", [t, f]))]
