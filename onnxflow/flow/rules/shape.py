"""Data movement: reshapes, transposes and concatenation move flow without changing it."""

from __future__ import annotations

import numpy as np

from onnxflow.flow.builder import Flow
from onnxflow.flow.registry import FlowRule, flow_rule


@flow_rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
class Reshape(FlowRule):
    """Static reshapes: the output shape is known, the transpose reshapes back."""

    def forward(self, g, node, x, *rest, **attrs):
        return g.map(x, lambda t: g.reshape(t, node.out_shapes[0]))

    def backward(self, g, node, grads, x, *rest, **attrs):
        return [g.map(grads[0], lambda t: g.reshape(t, x.shape))] + [None] * len(rest)


@flow_rule("Transpose")
class Transpose(FlowRule):
    def forward(self, g, node, x, *, perm=None):
        perm = list(perm) if perm else list(reversed(range(len(x.shape))))
        return g.map(x, lambda t: g.node("Transpose", [t], perm=perm))

    def backward(self, g, node, grads, x, *, perm=None):
        perm = list(perm) if perm else list(reversed(range(len(x.shape))))
        inverse = [int(i) for i in np.argsort(perm)]
        return [g.map(grads[0], lambda t: g.node("Transpose", [t], perm=inverse))]


@flow_rule("Concat")
class Concat(FlowRule):
    """Flows are brought to one unit and concatenated; constant parts carry no flow."""

    def forward(self, g, node, *inputs, axis):
        flows = [v for v in inputs if isinstance(v, Flow)]
        tensors, scale = g.align(flows)
        it = iter(tensors)
        parts = [next(it) if isinstance(v, Flow) else g.zeros(v.shape) for v in inputs]
        return Flow(g.node("Concat", parts, axis=axis), scale)

    def backward(self, g, node, grads, *inputs, axis):
        (gy,) = grads
        axis = axis % len(node.out_shapes[0])
        sizes = [v.shape[axis] for v in inputs]
        parts = g.node("Split", [gy.tensor, g.i64(sizes)], n_out=len(sizes), axis=axis)
        parts = parts if isinstance(parts, list) else [parts]
        return [
            g.like(p, gy) if isinstance(v, Flow) and v.needs_grad else None
            for p, v in zip(parts, inputs, strict=True)
        ]
