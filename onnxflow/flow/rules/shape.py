"""Data movement: reshapes, transposes, depth/space moves and concatenation move flow as is."""

from __future__ import annotations

import numpy as np

from onnxflow.flow.builder import Const, Flow
from onnxflow.flow.registry import FlowRule, flow_rule
from onnxflow.flow.sources import finite_unit, token_source


@flow_rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
class Reshape(FlowRule):
    """Static reshapes: the output shape is known, the transpose reshapes back. A per-channel
    unit passes when the batch and channel axes stay (Flatten of (N, C, 1, 1))."""

    channel_units = True

    def forward(self, g, node, x, *rest, **attrs):
        out = node.out_shapes[0]
        t = g.reshape(x.tensor, out)
        if not x.per_channel:
            return Flow(t, x.scale)
        if len(out) >= 2 and tuple(out[:2]) == tuple(x.shape[:2]):
            unit_shape = (1, out[1], *[1] * (len(out) - 2))
            return Flow(t, g.unit_as(x, unit_shape), unit_shape=unit_shape)
        return g.map(g.resolve(x), lambda t: g.reshape(t, out))

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
    """Along the channel axis (1), flows of different units keep them: the output gets one
    unit per channel, so that a part far smaller than another (an early DenseNet feature
    beside a late one) does not underflow in one float32 tensor. Otherwise flows are brought
    to one unit, and how far apart they were is watched (`FlowBuilder.align`): parts more
    than float32 spans below the others (the positions of a recurrence unrolled over a
    sequence, each a product of the ones before) lose their precision, and the run says so
    (`FlowModel.joins`). A constant part is a learned token (class, register, distillation token,
    learned query): a flow source of ones in the unit of the flows beside it, see
    flow/sources.py."""

    channel_units = True

    def forward(self, g, node, *inputs, axis):
        out = node.out_shapes[0]
        flows = [v for v in inputs if isinstance(v, Flow)]
        one_unit = len({f.scale for f in flows}) == 1 and not any(f.per_channel for f in flows)
        channel = len(out) >= 2 and axis % len(out) == 1
        if one_unit or not channel or len(flows) < len(inputs):
            watch = None if channel else node.name
            tensors, scale = g.align([g.resolve(f) for f in flows], watch=watch)
            if len(tensors) < len(inputs):  # learned tokens: ones in the data's unit
                scale = finite_unit(g, scale)
                it = iter(tensors)
                tensors = [
                    token_source(g, v, scale).tensor if isinstance(v, Const) else next(it)
                    for v in inputs
                ]
            return Flow(g.node("Concat", tensors, axis=axis), scale)
        rank = len(out)
        units = [g.channel_unit(v, rank, v.shape[1]) for v in flows]
        unit_shape = (1, out[1], *[1] * (rank - 2))
        return Flow(
            g.node("Concat", [v.tensor for v in flows], axis=1),
            g.node("Concat", units, axis=1),
            unit_shape=unit_shape,
        )

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


def _space_depth_moves(op: str, shape: tuple[int, ...], blocksize: int, mode: str):
    """DepthToSpace / SpaceToDepth as reshape -> transpose -> reshape: (split shape, perm)."""
    n, c, h, w = shape
    b = blocksize
    if op == "SpaceToDepth":
        return (n, c, h // b, b, w // b, b), [0, 3, 5, 1, 2, 4]
    if mode == "CRD":
        return (n, c // (b * b), b, b, h, w), [0, 1, 4, 2, 5, 3]
    return (n, b, b, c // (b * b), h, w), [0, 3, 4, 1, 5, 2]


@flow_rule("DepthToSpace", "SpaceToDepth")
class SpaceDepth(FlowRule):
    """A permutation of the elements: as it is forward, the inverse permutation back."""

    def forward(self, g, node, x, *, blocksize, mode="DCR"):
        attrs = {"blocksize": blocksize}
        if node.op_type == "DepthToSpace":
            attrs["mode"] = mode
        return g.map(x, lambda t: g.node(node.op_type, [t], **attrs))

    def backward(self, g, node, grads, x, *, blocksize, mode="DCR"):
        split, perm = _space_depth_moves(node.op_type, tuple(x.shape), blocksize, mode)
        moved = [split[p] for p in perm]
        inverse = [int(i) for i in np.argsort(perm)]

        def back(t: str) -> str:
            t = g.node("Transpose", [g.reshape(t, moved)], perm=inverse)
            return g.reshape(t, x.shape)

        return [g.map(grads[0], back)]
