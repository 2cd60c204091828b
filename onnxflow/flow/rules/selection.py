"""Selection and running sums: Where, TopK, GatherElements, CumSum.

Where and TopK choose among their inputs: flow goes through the chosen ones and back to
them. The choice itself (Where's condition, TopK's order) is made in the flow model as the
graph makes it: constants as they are, values computed from the inputs on the all-ones
input, and TopK on the flow, as MaxPool picks its winners. CumSum is linear with
non-negative coefficients: as it is forward, the reverse running sum back.
"""

from __future__ import annotations

import numpy as np

from onnxflow.errors import OnnxflowError
from onnxflow.flow.builder import Const, Flow
from onnxflow.flow.registry import FlowRule, flow_rule


@flow_rule("Where")
class Where(FlowRule):
    """Where(cond, a, b): the chosen flow; a constant branch is a bias and carries none."""

    def forward(self, g, node, cond, a, b):
        if isinstance(cond, Flow):
            raise OnnxflowError(f"node {node.name!r}: Where with a float condition")
        c = node.saved["cond"] = g.const_input(cond)
        flows = [v for v in (a, b) if isinstance(v, Flow)]
        tensors, scale = g.align(flows)
        it = iter(tensors)
        ta, tb = (next(it) if isinstance(v, Flow) else g.f32(0.0) for v in (a, b))
        shape = np.broadcast_shapes(cond.shape, *(f.shape for f in flows))
        t = g.expand_to(g.node("Where", [c, ta, tb]), shape, node.out_shapes[0])
        return Flow(t, scale)

    def backward(self, g, node, grads, cond, a, b):
        (gy,) = grads
        c, out, zero = node.saved["cond"], node.out_shapes[0], g.f32(0.0)
        res: list[Flow | None] = [None]
        for v, pair in ((a, (gy.tensor, zero)), (b, (zero, gy.tensor))):
            if isinstance(v, Flow) and v.needs_grad:
                t = g.reduce_to(g.node("Where", [c, *pair]), out, v.shape)
                res.append(g.like(t, gy))
            else:
                res.append(None)
        return res


@flow_rule("TopK")
class TopK(FlowRule):
    """Values: the flow gathered at the k winners (chosen on the flow); indices: no flow.
    Backward scatters each value's flow to the input it was taken from."""

    flow_outputs = 1

    def forward(self, g, node, x, k_input=None, **attrs):
        k = g.const_input(k_input) if k_input is not None else g.i64([int(attrs.pop("k"))])
        attrs.pop("k", None)
        values, indices = g.node("TopK", [x.tensor, k], n_out=2, **attrs)
        node.saved["indices"] = indices
        return [g.like(values, x), Const(indices, node.out_shapes[1])]

    def backward(self, g, node, grads, x, k_input=None, **attrs):
        gy = grads[0]
        if gy is None:
            return [None, None]
        back = g.node(
            "ScatterElements",
            [g.zeros(x.shape), node.saved["indices"], gy.tensor],
            axis=attrs.get("axis", -1),
        )
        return [g.like(back, gy), None]


@flow_rule("GatherElements")
class GatherElements(FlowRule):
    """A gather by constant (or computed) indices; back: scatter-add to the same places."""

    def forward(self, g, node, data, indices, *, axis=0):
        if not isinstance(data, Flow):
            raise OnnxflowError(f"node {node.name!r}: GatherElements with float indices")
        idx = node.saved["indices"] = g.const_input(indices)
        return g.like(g.node("GatherElements", [data.tensor, idx], axis=axis), data)

    def backward(self, g, node, grads, data, indices, *, axis=0):
        (gy,) = grads
        back = g.node(
            "ScatterElements",
            [g.zeros(data.shape), node.saved["indices"], gy.tensor],
            axis=axis,
            reduction="add",
        )
        return [g.like(back, gy), None]


@flow_rule("CumSum")
class CumSum(FlowRule):
    """Running sum along an axis; its transpose is the running sum the other way."""

    def forward(self, g, node, x, axis, *, exclusive=0, reverse=0):
        ax = g.const_input(axis)
        t = g.node("CumSum", [x.tensor, ax], exclusive=exclusive, reverse=reverse)
        return g.like(t, x)

    def backward(self, g, node, grads, x, axis, *, exclusive=0, reverse=0):
        (gy,) = grads
        ax = g.const_input(axis)
        t = g.node("CumSum", [gy.tensor, ax], exclusive=exclusive, reverse=1 - reverse)
        return [g.like(t, gy), None]
