"""Indexing: Gather, Slice, Split, Pad, Expand, Tile, Shape (Resize is in `resample`).

All move flow without changing it; their transposes scatter it back. Index maps are
computed once at build time (the shapes are static), so the flow model only gathers and
scatters.
"""

from __future__ import annotations

import numpy as np

from onnxflow.errors import OnnxflowError
from onnxflow.flow.builder import Const, Flow, FlowBuilder, Shape
from onnxflow.flow.registry import FlowRule, flow_rule
from onnxflow.flow.sources import lookup_backward, lookup_forward


def _values(node, c, what: str) -> np.ndarray:
    """A constant operand's values (or an attribute's, in older opsets)."""
    if isinstance(c, list | tuple | np.ndarray):
        return np.asarray(c)
    if not isinstance(c, Const) or c.values is None:
        raise OnnxflowError(f"node {node.name!r} ({node.op_type}): {what} must be constant")
    return np.asarray(c.values)


def _scatter_back(g: FlowBuilder, gy: Flow, index: np.ndarray, in_shape: Shape) -> Flow:
    """Transpose of `y = x.flat[index]`: add each output's flow into the input it came from."""
    size = int(np.prod(in_shape))
    flat = g.node(
        "ScatterElements",
        [
            g.zeros((size,)),
            g.i64(index.reshape(-1).tolist())
            if index.size <= 64
            else g.const(index.reshape(-1).astype(np.int64), "index"),
            g.reshape(gy.tensor, [-1]),
        ],
        reduction="add",
    )
    return g.like(g.reshape(flat, list(in_shape)), gy)


def _index_map(in_shape: Shape, fn) -> np.ndarray:
    """Apply a data-movement function to the flat indices of the input."""
    return np.asarray(fn(np.arange(int(np.prod(in_shape)), dtype=np.int64).reshape(in_shape)))


@flow_rule("Gather")
class Gather(FlowRule):
    """Gather of a flow moves it, by constant indices or by indices the flow model computes
    (CLIP's pooling at the argmax of the ids: a data-dependent selection, made on the
    all-ones input like Where's condition). A Gather of a prunable table by run-time ids
    (`ctx.saved["lookup"]`: tied embeddings) is a weight layer, one-hot(ids) @ table, on an
    all-ones input (flow/sources.py)."""

    def forward(self, g, node, data, indices, *, axis=0):
        idx = indices
        if isinstance(idx, Flow):
            raise OnnxflowError(f"node {node.name!r}: Gather with float indices")
        if node.saved.get("lookup"):
            shape = node.out_shapes[0]
            t = lookup_forward(g, data.tensor, data.shape, len(idx.shape), axis, shape)
            return g.rescale(Flow(t, data.scale, shape), shape)
        ind = g.const_input(idx)
        node.saved["indices"] = ind
        return g.like(g.node("Gather", [data.tensor, ind], axis=axis), data)

    def backward(self, g, node, grads, data, indices, *, axis=0):
        if not (isinstance(data, Flow) and data.needs_grad):
            return [None, None]
        if node.saved.get("lookup"):
            gy = grads[0]
            t = lookup_backward(g, gy.tensor, data.shape, len(indices.shape), axis)
            return [g.like(t, gy), None]
        if isinstance(indices, Const) and indices.values is None:
            return [_scatter_back_runtime(g, node, grads[0], data.shape, axis), None]
        idx = _values(node, indices, "indices of a gathered flow").astype(np.int64)
        index = _index_map(data.shape, lambda a: np.take(a, idx, axis=axis))
        return [_scatter_back(g, grads[0], index, data.shape), None]


def _scatter_back_runtime(g: FlowBuilder, node, gy: Flow, in_shape: Shape, axis: int) -> Flow:
    """`_scatter_back` for indices known only when the flow model runs: the index map is the
    same Gather applied to the flat positions of the input."""
    size = int(np.prod(in_shape))
    iota = g.const(np.arange(size, dtype=np.int64).reshape(in_shape), "iota")
    index = g.node("Gather", [iota, node.saved["indices"]], axis=axis)
    flat = g.node(
        "ScatterElements",
        [g.zeros((size,)), g.reshape(index, [-1]), g.reshape(gy.tensor, [-1])],
        reduction="add",
    )
    return g.like(g.reshape(flat, list(in_shape)), gy)


@flow_rule("Slice")
class Slice(FlowRule):
    """Selects inputs: a gather forward, a scatter back (inputs or, before opset 10,
    attributes)."""

    def forward(self, g, node, data, starts=None, ends=None, axes=None, steps=None):
        params = [starts, ends, axes, steps]
        if any(isinstance(p, Const) and p.values is None for p in params):
            # Computed when the flow model runs (from shapes, or integer inputs): the index
            # map is the same Slice of the input's flat positions.
            names = ["" if p is None else g.const_input(p) for p in params]
            while names and not names[-1]:
                names.pop()
            size = int(np.prod(data.shape))
            iota = g.const(np.arange(size, dtype=np.int64).reshape(data.shape), "iota")
            index = node.saved["runtime_index"] = g.node("Slice", [iota, *names])
            flat = g.node("Gather", [g.reshape(data.tensor, [-1]), g.reshape(index, [-1])])
            return g.like(g.reshape(flat, list(node.out_shapes[0])), data)
        s, e = _values(node, starts, "starts"), _values(node, ends, "ends")
        ax = np.arange(len(s)) if axes is None else _values(node, axes, "axes")
        st = np.ones(len(s), np.int64) if steps is None else _values(node, steps, "steps")
        slices = [slice(None)] * len(data.shape)
        for a, b, c, d in zip(ax, s, e, st, strict=True):
            slices[int(a) % len(data.shape)] = slice(int(b), int(c), int(d))
        index = _index_map(data.shape, lambda arr: arr[tuple(slices)])
        node.saved["index"] = index
        return _gather(g, data, index, node.out_shapes[0])

    def backward(self, g, node, grads, data, *rest, **attrs):
        if "runtime_index" in node.saved:
            size, gy = int(np.prod(data.shape)), grads[0]
            flat = g.node(
                "ScatterElements",
                [
                    g.zeros((size,)),
                    g.reshape(node.saved["runtime_index"], [-1]),
                    g.reshape(gy.tensor, [-1]),
                ],
                reduction="add",
            )
            back = g.like(g.reshape(flat, list(data.shape)), gy)
            return [back] + [None] * len(rest)
        return [_scatter_back(g, grads[0], node.saved["index"], data.shape)] + [None] * len(rest)


def _gather(g: FlowBuilder, x: Flow, index: np.ndarray, out_shape: Shape) -> Flow:
    flat = g.node("Gather", [g.reshape(x.tensor, [-1]), g.const(index.reshape(-1), "index")])
    return g.like(g.reshape(flat, list(out_shape)), x)


@flow_rule("Split")
class Split(FlowRule):
    def forward(self, g, node, x, split=None, *, axis=0, num_outputs=None):
        sizes = [shape[axis] for shape in node.out_shapes]
        outs = g.node("Split", [x.tensor, g.i64(sizes)], n_out=len(sizes), axis=axis)
        outs = outs if isinstance(outs, list) else [outs]
        return [g.like(o, x) for o in outs]

    def backward(self, g, node, grads, x, split=None, *, axis=0, num_outputs=None):
        parts, scale = [], None
        present = [gr for gr in grads if gr is not None]
        tensors, scale = g.align(present)
        it = iter(tensors)
        for gr, shape in zip(grads, node.out_shapes, strict=True):
            parts.append(next(it) if gr is not None else g.zeros(shape))
        return [Flow(g.node("Concat", parts, axis=axis), scale), None]


@flow_rule("Pad")
class Pad(FlowRule):
    """Padding adds constants (no flow); edge/reflect modes copy inputs, which the index map
    of the transpose accounts for."""

    def forward(
        self, g, node, x, pads=None, constant_value=None, axes=None, *, mode="constant", **attrs
    ):
        index = self._index(node, x, pads, axes, mode, attrs)
        node.saved["index"] = index
        valid = index >= 0
        gathered = g.node(
            "Gather",
            [g.reshape(x.tensor, [-1]), g.const(np.where(valid, index, 0).reshape(-1), "index")],
        )
        masked = g.node("Mul", [gathered, g.const(valid.reshape(-1).astype(np.float32), "m")])
        return g.like(g.reshape(masked, list(node.out_shapes[0])), x)

    def _index(self, node, x, pads, axes, mode, attrs) -> np.ndarray:
        p = _values(node, attrs["pads"] if pads is None else pads, "pads").tolist()
        rank = len(x.shape)
        ax = (
            list(range(rank))
            if axes is None
            else [int(a) % rank for a in _values(node, axes, "axes")]
        )
        width = [(0, 0)] * rank
        for i, a in enumerate(ax):
            width[a] = (int(p[i]), int(p[i + len(ax)]))
        flat = np.arange(int(np.prod(x.shape)), dtype=np.int64).reshape(x.shape)
        crop = tuple(
            slice(max(0, -b), d - max(0, -e)) for (b, e), d in zip(width, x.shape, strict=True)
        )
        pos = [(max(0, b), max(0, e)) for b, e in width]
        if mode == "constant":
            return np.pad(flat[crop], pos, mode="constant", constant_values=-1)
        if mode in ("reflect", "edge", "wrap"):
            return np.pad(flat[crop], pos, mode=mode)
        raise OnnxflowError(f"node {node.name!r}: Pad mode {mode!r} is not supported")

    def backward(self, g, node, grads, x, pads=None, constant_value=None, axes=None, **attrs):
        index = node.saved["index"]
        valid = index >= 0
        gy = grads[0]
        kept = g.node(
            "Gather",
            [g.reshape(gy.tensor, [-1]), g.const(np.flatnonzero(valid.reshape(-1)), "index")],
        )
        size = int(np.prod(x.shape))
        flat = g.node(
            "ScatterElements",
            [g.zeros((size,)), g.const(index[valid].astype(np.int64), "index"), kept],
            reduction="add",
        )
        return [g.like(g.reshape(flat, list(x.shape)), gy), None, None, None]


@flow_rule("Expand", "Tile")
class Broadcast(FlowRule):
    """Copies of the input: the transpose adds the copies back."""

    def forward(self, g, node, x, shape_or_repeats):
        index = _index_map(
            x.shape,
            lambda a: (
                np.broadcast_to(a, node.out_shapes[0])
                if node.op_type == "Expand"
                else np.tile(a, _values(node, shape_or_repeats, "repeats").tolist())
            ),
        )
        node.saved["index"] = index
        return _gather(g, x, index, node.out_shapes[0])

    def backward(self, g, node, grads, x, shape_or_repeats):
        return [_scatter_back(g, grads[0], node.saved["index"], x.shape), None]


@flow_rule(
    "Shape",
    "Size",
    "ArgMax",
    "ArgMin",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Not",
    "IsNaN",
    "IsInf",
    "NonZero",
    "Hardmax",
)
class EndsFlow(FlowRule):
    """Shapes, indices and comparisons (an ArgMax label beside the probabilities; Hardmax, its
    one-hot float spelling): the result is data about the flow, not flow; nothing goes back."""

    flow_outputs = 0

    def forward(self, g, node, *inputs, **attrs):
        names = [v.tensor if isinstance(v, Flow) else g.const_input(v) for v in inputs]
        return Const(g.node(node.op_type, names, **attrs), node.out_shapes[0])

    def backward(self, g, node, grads, *inputs, **attrs):
        return [None] * len(inputs)
