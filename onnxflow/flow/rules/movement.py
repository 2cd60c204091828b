"""More data movement: GatherND, ScatterND, ScatterElements, MaxUnpool, Col2Im, and the ops
that pick elements by constant arguments (Trilu, ReverseSequence, CenterCropPad, Compress).

Each output element is an input element, a constant fill, or (Col2Im, scatters with
`reduction="add"`) a sum of input elements: flow moves as it is and its transpose routes it
back. Ops whose choice is fixed by constant operands get a static index map, read off one
onnxruntime run of the op on the input's flat indices; GatherND, the scatters and MaxUnpool
take their indices as the flow model computes them (constants, or values computed from the
inputs on the all-ones input, as Where's condition).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxflow.errors import OnnxflowError, one_line
from onnxflow.flow.builder import Const, Flow, FlowBuilder, NodeContext, Shape
from onnxflow.flow.registry import FlowRule, flow_rule


def _masked_gather(g: FlowBuilder, x: Flow, index: np.ndarray) -> Flow:
    """y.flat[j] = x.flat[index[j]], 0 where index is -1."""
    valid = index >= 0
    flat = g.node(
        "Gather",
        [g.reshape(x.tensor, [-1]), g.const(np.where(valid, index, 0).reshape(-1), "index")],
    )
    if not valid.all():
        flat = g.node("Mul", [flat, g.const(valid.reshape(-1).astype(np.float32), "m")])
    return g.like(g.reshape(flat, list(index.shape)), x)


def _masked_scatter(g: FlowBuilder, gy: Flow, index: np.ndarray, in_shape: Shape) -> Flow:
    """Transpose of `_masked_gather`: x.flat[index[j]] += y.flat[j] where index is valid."""
    valid = index.reshape(-1) >= 0
    kept = g.reshape(gy.tensor, [-1])
    if not valid.all():
        kept = g.node("Gather", [kept, g.const(np.flatnonzero(valid), "index")])
    flat = g.node(
        "ScatterElements",
        [
            g.zeros((int(np.prod(in_shape)),)),
            g.const(index.reshape(-1)[valid].astype(np.int64), "index"),
            kept,
        ],
        reduction="add",
    )
    return g.like(g.reshape(flat, list(in_shape)), gy)


def _index_map_by_runtime(g: FlowBuilder, node: NodeContext, x: Flow, rest, attrs) -> np.ndarray:
    """Run the op on int64 `flat index + 1` (constant operands as they are): each output
    element's source, -1 where the op fills a constant (zeros of the padding)."""
    from onnxflow.runtime import ort_session

    names, inits = ["x"], []
    for i, v in enumerate(rest):
        if v is None:
            names.append("")
            continue
        if not isinstance(v, Const) or v.values is None:
            raise OnnxflowError(
                f"node {node.name!r} ({node.op_type}): operand {i + 1} must be constant"
            )
        names.append(f"c{i}")
        inits.append(numpy_helper.from_array(np.asarray(v.values), f"c{i}"))
    n = helper.make_node(node.op_type, names, ["y"], **attrs)
    graph = helper.make_graph(
        [n],
        "index_map",
        [helper.make_tensor_value_info("x", TensorProto.INT64, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", g.opset)])
    model.ir_version = 8
    src = np.arange(1, int(np.prod(x.shape)) + 1, dtype=np.int64).reshape(x.shape)
    try:
        (y,) = ort_session(model.SerializeToString(), "cpu").run(None, {"x": src})
    except Exception as e:  # noqa: BLE001 - onnxruntime's own errors, shown on one line
        raise OnnxflowError(
            f"node {node.name!r} ({node.op_type}): onnxruntime cannot run it on index data: "
            f"{one_line(e)}"
        ) from None
    return np.asarray(y, np.int64) - 1


@flow_rule("Trilu", "ReverseSequence", "CenterCropPad", "Compress")
class IndexMapped(FlowRule):
    """Picks (or fills) elements by constant operands: a gather by the op's own index map."""

    def forward(self, g, node, x, *rest, **attrs):
        index = _index_map_by_runtime(g, node, x, rest, attrs)
        node.saved["index"] = index
        return _masked_gather(g, x, index)

    def backward(self, g, node, grads, x, *rest, **attrs):
        return [_masked_scatter(g, grads[0], node.saved["index"], x.shape)] + [None] * len(rest)


def _indices(g: FlowBuilder, node: NodeContext, indices) -> str:
    if isinstance(indices, Flow):
        raise OnnxflowError(f"node {node.name!r} ({node.op_type}): float indices")
    return g.const_input(indices)


@flow_rule("GatherND")
class GatherND(FlowRule):
    """As it is; back: ScatterND with reduction add into zeros (batch_dims 0)."""

    def forward(self, g, node, data, indices, *, batch_dims=0):
        if not isinstance(data, Flow):
            raise OnnxflowError(f"node {node.name!r}: GatherND with float indices")
        if batch_dims:
            raise OnnxflowError(
                f"node {node.name!r}: GatherND with batch_dims={batch_dims} on a flow is "
                "not supported"
            )
        idx = node.saved["indices"] = _indices(g, node, indices)
        return g.like(g.node("GatherND", [data.tensor, idx]), data)

    def backward(self, g, node, grads, data, indices, **attrs):
        (gy,) = grads
        t = g.node(
            "ScatterND", [g.zeros(data.shape), node.saved["indices"], gy.tensor], reduction="add"
        )
        return [g.like(t, gy), None]


class _Scatter(FlowRule):
    """data with `updates` written (reduction none) or added (add) at `indices`. A constant
    data or updates operand is a bias: zeros. Back: to data, the flow not overwritten; to
    updates, the flow gathered at the indices."""

    gather = ""
    scatter = ""

    def forward(self, g, node, data, indices, updates, **attrs):
        if attrs.get("reduction", "none") not in ("none", "add"):
            raise OnnxflowError(
                f"node {node.name!r} ({node.op_type}): reduction {attrs['reduction']!r} on a "
                "flow is not supported (only none and add)"
            )
        idx = node.saved["indices"] = _indices(g, node, indices)
        flows = [v for v in (data, updates) if isinstance(v, Flow)]
        tensors, scale = g.align(flows)
        it = iter(tensors)
        d = next(it) if isinstance(data, Flow) else g.zeros(data.shape)
        u = next(it) if isinstance(updates, Flow) else g.zeros(updates.shape)
        return Flow(g.node(self.scatter, [d, idx, u], **attrs), scale)

    def backward(self, g, node, grads, data, indices, updates, **attrs):
        (gy,) = grads
        idx = node.saved["indices"]
        res: list[Flow | None] = [None, None, None]
        axis = {"axis": attrs.get("axis", 0)} if self.scatter == "ScatterElements" else {}
        if isinstance(data, Flow) and data.needs_grad:
            t = gy.tensor
            if attrs.get("reduction", "none") == "none":
                t = g.node(self.scatter, [t, idx, g.zeros(updates.shape)], **axis)
            res[0] = g.like(t, gy)
        if isinstance(updates, Flow) and updates.needs_grad:
            res[2] = g.like(g.node(self.gather, [gy.tensor, idx], **axis), gy)
        return res


@flow_rule("ScatterND")
class ScatterND(_Scatter):
    gather, scatter = "GatherND", "ScatterND"


@flow_rule("ScatterElements", "Scatter")
class ScatterElements(_Scatter):
    gather, scatter = "GatherElements", "ScatterElements"


@flow_rule("MaxUnpool")
class MaxUnpool(FlowRule):
    """Places each input at its (MaxPool) index, as it is; back: gathers the flow there."""

    def forward(self, g, node, x, indices, output_shape=None, **attrs):
        idx = node.saved["indices"] = _indices(g, node, indices)
        extra = [] if output_shape is None else [g.const_input(output_shape)]
        return g.like(g.node("MaxUnpool", [x.tensor, idx, *extra], **attrs), x)

    def backward(self, g, node, grads, x, indices, output_shape=None, **attrs):
        (gy,) = grads
        flat = g.node(
            "Gather", [g.reshape(gy.tensor, [-1]), g.reshape(node.saved["indices"], [-1])]
        )
        return [g.like(g.reshape(flat, list(x.shape)), gy), None, None]


def col2im_index(
    in_shape: Shape, image: list[int], block: list[int], dilations, pads, strides
) -> np.ndarray:
    """For each element of Col2Im's input (N, C * prod(block), L), its flat position in the
    output image (N, C, *image), -1 where it falls in the padding."""
    nd = len(image)
    n, ck, length = in_shape
    kk = int(np.prod(block))
    c = ck // kk
    counts = [
        (image[i] + pads[i] + pads[nd + i] - dilations[i] * (block[i] - 1) - 1) // strides[i] + 1
        for i in range(nd)
    ]
    assert int(np.prod(counts)) == length
    kpos = np.stack(np.unravel_index(np.arange(kk), block), axis=1)  # (kk, nd)
    lpos = np.stack(np.unravel_index(np.arange(length), counts), axis=1)  # (L, nd)
    coord = (
        lpos[None, :, :] * np.asarray(strides)[None, None, :]
        - np.asarray(pads[:nd])[None, None, :]
        + kpos[:, None, :] * np.asarray(dilations)[None, None, :]
    )  # (kk, L, nd)
    inside = ((coord >= 0) & (coord < np.asarray(image))).all(axis=-1)
    spatial = np.ravel_multi_index(tuple(np.clip(coord, 0, np.asarray(image) - 1).T), image).T
    spatial = np.where(inside, spatial, -1)  # (kk, L)
    size = int(np.prod(image))
    out = np.empty((n, c, kk, length), np.int64)
    for b in range(n):
        for ch in range(c):
            base = (b * c + ch) * size
            out[b, ch] = np.where(spatial >= 0, spatial + base, -1)
    return out.reshape(in_shape)


@flow_rule("Col2Im")
class Col2Im(FlowRule):
    """Sums overlapping blocks into an image: a scatter-add by a static map forward, the
    gather (im2col) of the same map back."""

    def forward(self, g, node, x, image_shape, block_shape, **attrs):
        if image_shape.values is None or block_shape.values is None:
            raise OnnxflowError(f"node {node.name!r}: Col2Im needs constant shapes")
        image = [int(v) for v in np.asarray(image_shape.values).reshape(-1)]
        block = [int(v) for v in np.asarray(block_shape.values).reshape(-1)]
        nd = len(image)
        index = col2im_index(
            x.shape,
            image,
            block,
            list(attrs.get("dilations") or [1] * nd),
            list(attrs.get("pads") or [0] * 2 * nd),
            list(attrs.get("strides") or [1] * nd),
        )
        node.saved["index"] = index
        return _masked_scatter(g, x, index, node.out_shapes[0])

    def backward(self, g, node, grads, x, image_shape, block_shape, **attrs):
        return [_masked_gather(g, grads[0], node.saved["index"]), None, None]
