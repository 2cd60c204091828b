"""Normalizations other than BatchNormalization: their positive per-channel scale.

Layer, instance and group normalization divide by statistics of the activations, which are
not weights and lie on no input-output path of R; what remains of them in the positive
linearization is the per-channel scale |gamma| (shifts are biases).
"""

from __future__ import annotations

import numpy as np

from onnxflow.errors import OnnxflowError
from onnxflow.flow.builder import Const
from onnxflow.flow.registry import FlowRule, flow_rule


def _abs_scale(node, scale) -> np.ndarray:
    if not isinstance(scale, Const) or scale.values is None:
        raise OnnxflowError(f"node {node.name!r}: {node.op_type} needs a constant scale")
    return np.abs(np.asarray(scale.values, np.float32))


@flow_rule("LayerNormalization")
class LayerNormalization(FlowRule):
    """x * |gamma|, gamma broadcast over the normalized (trailing) axes."""

    flow_outputs = 1  # Mean and InvStdDev carry none

    def forward(self, g, node, x, scale, bias=None, **attrs):
        node.saved["scale"] = s = g.f32(_abs_scale(node, scale), "ln_scale")
        outs = [g.map(x, lambda t: g.node("Mul", [t, s]))]
        return outs + [None] * (len(node.out_shapes) - 1)

    def backward(self, g, node, grads, x, scale, bias=None, **attrs):
        s = node.saved["scale"]
        return [g.map(grads[0], lambda t: g.node("Mul", [t, s])), None, None]


@flow_rule("InstanceNormalization", "GroupNormalization")
class ChannelNormalization(FlowRule):
    """x * |gamma| per channel (axis 1)."""

    def forward(self, g, node, x, scale, bias=None, **attrs):
        s = _abs_scale(node, scale)
        channels = x.shape[1]
        if s.size != channels:  # GroupNormalization-18 has one scale per group
            s = np.repeat(s, channels // s.size)
        shape = [1, channels] + [1] * (len(x.shape) - 2)
        node.saved["scale"] = f = g.f32(s.reshape(shape), "norm_scale")
        return g.map(x, lambda t: g.node("Mul", [t, f]))

    def backward(self, g, node, grads, x, scale, bias=None, **attrs):
        f = node.saved["scale"]
        return [g.map(grads[0], lambda t: g.node("Mul", [t, f])), None, None]
