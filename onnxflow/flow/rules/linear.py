"""Weight layers: Conv, ConvTranspose, Gemm, MatMul, on |W| and without bias.

Backward flow through a weight layer is its transpose (Conv <-> ConvTranspose, MatMul with
the transposed weight); the flow at the weight, dR/d|W|, is the weight-gradient of the layer
evaluated with the forward flow `f` at its input and the backward flow `b` at its output.
For convolutions that is itself a convolution of `f` by `b` with stride and dilation swapped
(one per group), or a plain matrix product for 1x1 convolutions.

A weight layer reading a flow with one unit per channel (after a Concat) computes its output
in one unit (channels far below the others are negligible in that sum) but its weight's flow
per input channel, in that channel's unit: the score of a weight reading a channel 200 nats
below the others stays positive and exact. Depthwise convolutions keep the channels apart
and their per-channel units.

How each convolution product is spelled for onnxruntime (pointwise layers as matrix
products, depthwise layers as gathers per kernel tap, the weight as the wide GEMM operand on
maps of a few positions, else Conv and ConvTranspose) is `onnxflow.flow.conv`'s choice;
these rules decide what is computed and in which units.
"""

from __future__ import annotations

from onnx import TensorProto

from onnxflow.errors import OnnxflowError
from onnxflow.flow import conv
from onnxflow.flow.builder import Const, Flow, FlowBuilder, NodeContext, Shape
from onnxflow.flow.registry import FlowRule, flow_rule


def const_operand(g: FlowBuilder, node: NodeContext, v: Flow | Const) -> str:
    """Flow-model name of a weight-layer operand: a flow (incl. |W|*mask) or |constant|. A
    constant the graph computes (a weight behind a view kept out of folding whose layer is
    excluded, a weight computed from stored tensors) is its |value| when the flow model
    runs; such a weight is not pruned."""
    if isinstance(v, Flow):
        return v.tensor
    if isinstance(v, Const) and v.values is not None:
        return g.const_input(v, absolute=True)
    if isinstance(v, Const):
        return g.node("Cast", [g.node("Abs", [v.name])], to=TensorProto.FLOAT)
    raise OnnxflowError(f"node {node.name!r} ({node.op_type}): an operand is missing")


def _conv_attrs(w: Const, x_shape: Shape, strides, dilations, pads, auto_pad):
    k = tuple(w.shape[2:])
    nd = len(k)
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    return (
        k,
        strides,
        dilations,
        conv.conv_pads(tuple(x_shape[2:]), k, strides, dilations, pads, auto_pad),
    )


def _depthwise(x: Flow, w: Flow | Const, group: int) -> bool:
    """Whether each output channel reads only the same input channel (multiplier 1)."""
    return group > 1 and group == x.shape[1] == w.shape[0]


def _depthwise_plan(
    node: NodeContext, x: Flow, w: Flow | Const, group: int, k: Shape, strides, dilations, pads
) -> conv.Depthwise | None:
    """The gather plan of a depthwise Conv node (made once, shared by forward and
    backward), or None for any other Conv."""
    if not _depthwise(x, w, group):
        return None
    return node.once(
        "depthwise",
        lambda: conv.Depthwise(x.shape, node.out_shapes[0], k, strides, dilations, pads),
    )


def _resolved(g: FlowBuilder, node: NodeContext, *vs: object) -> list:
    """The operands in one unit each, computed once per node (forward) and reused (backward)."""
    return node.once("resolved", lambda: [g.resolve(v) if isinstance(v, Flow) else v for v in vs])


def _per_input_channel(g: FlowBuilder, x: Flow, t: str, unit_shape: Shape, gy: Flow) -> Flow:
    """Weight flow `t` computed from a per-channel `x`: its unit is x's unit laid along the
    weight's input-channel axis (`unit_shape`), plus the backward flow's."""
    unit = g.scale_sum(g.unit_as(x, unit_shape), gy.scale)
    return Flow(t, unit, unit_shape=tuple(unit_shape))


@flow_rule("Conv")
class Conv(FlowRule):
    rescales = True
    channel_units = True

    def forward(
        self,
        g,
        node,
        x,
        w,
        b=None,
        *,
        auto_pad="NOTSET",
        dilations=None,
        group=1,
        kernel_shape=None,
        pads=None,
        strides=None,
    ):
        k, strides, dilations, pads = _conv_attrs(w, x.shape, strides, dilations, pads, auto_pad)
        keep = x.per_channel and _depthwise(x, w, group)
        if not keep:
            x, w = _resolved(g, node, x, w)
        if conv.pointwise(k, strides, dilations, pads, group):
            y = conv.pointwise_forward(g, x.tensor, x.shape, const_operand(g, node, w), w.shape)
            return Flow(y, g.scale_sum(x.scale, *_scales(w)))
        plan = _depthwise_plan(node, x, w, group, k, strides, dilations, pads)
        if plan is not None and plan.gathers and plan.fits():
            y = plan.forward(g, node, x.tensor, const_operand(g, node, w))
            return Flow(y, g.scale_sum(x.scale, *_scales(w)), unit_shape=x.unit_shape)
        y = g.node(
            "Conv",
            [x.tensor, const_operand(g, node, w)],
            group=group,
            strides=strides,
            dilations=dilations,
            pads=pads,
            kernel_shape=list(k),
        )
        return Flow(y, g.scale_sum(x.scale, *_scales(w)), unit_shape=x.unit_shape if keep else ())

    def backward(
        self,
        g,
        node,
        grads,
        x,
        w,
        b=None,
        *,
        auto_pad="NOTSET",
        dilations=None,
        group=1,
        kernel_shape=None,
        pads=None,
        strides=None,
    ):
        (gy,) = grads
        k, strides, dilations, pads = _conv_attrs(w, x.shape, strides, dilations, pads, auto_pad)
        nd = len(k)
        y_shape = node.out_shapes[0]
        raw = x
        depthwise = x.per_channel and _depthwise(x, w, group)
        if x.per_channel and not depthwise:
            x, w = _resolved(g, node, x, w)
        if (raw.per_channel and group == 1) or depthwise:
            x = raw  # the weight's flow per input channel, each in its own unit
        wt = const_operand(g, node, w)
        plan = _depthwise_plan(node, x, w, group, k, strides, dilations, pads)
        if plan is not None and not plan.fits():
            plan = None
        dx = dw = None
        if x.needs_grad:
            if conv.pointwise(k, strides, dilations, pads, group):
                tx = conv.pointwise_backward(g, gy.tensor, y_shape, wt, w.shape)
            elif plan is not None and plan.gathers:
                tx = plan.backward(g, node, gy.tensor, wt)
            elif group == 1 and conv.narrow(y_shape) and conv.narrow_col2im_fits(x.shape, k):
                tx = conv.narrow_transpose(
                    g, gy.tensor, y_shape, wt, w.shape, x.shape, strides, dilations, pads
                )
            elif plan is not None and (begins := conv.flipped_begins(k, strides, dilations, pads)):
                tx = conv.conv_full(
                    g,
                    gy.tensor,
                    conv.flip(g, wt, nd),
                    group=group,
                    strides=strides,
                    dilations=dilations,
                    pads=begins,
                    in_sp=y_shape[2:],
                    k=k,
                    want=x.shape[2:],
                )
            else:
                tx = conv.conv_transpose_full(
                    g,
                    gy.tensor,
                    wt,
                    group=group,
                    strides=strides,
                    dilations=dilations,
                    begins=pads[:nd],
                    in_sp=y_shape[2:],
                    k=k,
                    want=x.shape[2:],
                )
            dx = g.like(tx, g.scale_sum(gy.scale, *_scales(w)))
        if isinstance(w, Flow) and w.needs_grad:
            if plan is not None:
                t = plan.weight_flow(g, node, x.tensor, gy.tensor, w.shape)
            else:
                t = conv.im2col_grad(
                    g,
                    x.tensor,
                    x.shape,
                    gy.tensor,
                    y_shape,
                    k=k,
                    group=group,
                    strides=strides,
                    dilations=dilations,
                    pads=pads,
                ) or conv.correlate(
                    g,
                    x.tensor,
                    x.shape,
                    gy.tensor,
                    y_shape,
                    group=group,
                    strides=strides,
                    dilations=dilations,
                    begins=pads[:nd],
                    k=k,
                )
            if x.per_channel:
                cin = x.shape[1]
                axes = (1, cin) if group == 1 else (cin, 1)
                dw = _per_input_channel(g, x, t, (*axes, *[1] * nd), gy)
            else:
                dw = Flow(t, g.scale_sum(x.scale, gy.scale))
        return [dx, dw, None]


def _conv_transpose_begins(
    x_shape: Shape,
    y_shape: Shape,
    w: Const,
    strides,
    dilations,
    pads,
    auto_pad,
    output_padding,
    output_shape,
) -> list[int]:
    """Head pads of a ConvTranspose, from the attributes and the actual output size."""
    k = w.shape[2:]
    nd = len(k)
    if pads and auto_pad in ("NOTSET", "") and not output_shape:
        return list(pads[:nd])
    op = list(output_padding or [0] * nd)
    begins = []
    for i in range(nd):
        total = (
            strides[i] * (x_shape[2 + i] - 1)
            + op[i]
            + (k[i] - 1) * dilations[i]
            + 1
            - y_shape[2 + i]
        )
        begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    return begins


@flow_rule("ConvTranspose")
class ConvTranspose(FlowRule):
    rescales = True

    def forward(self, g, node, x, w, b=None, **attrs):
        y = g.node("ConvTranspose", [x.tensor, const_operand(g, node, w)], **attrs)
        return Flow(y, g.scale_sum(x.scale, *_scales(w)))

    def backward(
        self,
        g,
        node,
        grads,
        x,
        w,
        b=None,
        *,
        auto_pad="NOTSET",
        dilations=None,
        group=1,
        kernel_shape=None,
        output_padding=None,
        output_shape=None,
        pads=None,
        strides=None,
    ):
        (gy,) = grads
        k = tuple(w.shape[2:])
        nd = len(k)
        strides = list(strides or [1] * nd)
        dilations = list(dilations or [1] * nd)
        y_shape = node.out_shapes[0]
        begins = _conv_transpose_begins(
            x.shape, y_shape, w, strides, dilations, pads, auto_pad, output_padding, output_shape
        )
        wt = const_operand(g, node, w)
        dx = dw = None
        if x.needs_grad:
            dx = g.like(
                conv.conv_full(
                    g,
                    gy.tensor,
                    wt,
                    group=group,
                    strides=strides,
                    dilations=dilations,
                    pads=begins + [0] * nd,
                    in_sp=y_shape[2:],
                    k=k,
                    want=x.shape[2:],
                ),
                g.scale_sum(gy.scale, *_scales(w)),
            )
        if isinstance(w, Flow) and w.needs_grad:
            t = conv.correlate(
                g,
                gy.tensor,
                y_shape,
                x.tensor,
                x.shape,
                group=group,
                strides=strides,
                dilations=dilations,
                begins=begins,
                k=k,
            )
            dw = Flow(t, g.scale_sum(x.scale, gy.scale))
        return [dx, dw, None]


@flow_rule("Gemm")
class Gemm(FlowRule):
    """Y = |alpha| A' B' + |beta| C where C carries flow (a constant C is a bias: dropped)."""

    rescales = True
    channel_units = True

    def forward(self, g, node, a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
        a, b, c = _resolved(g, node, a, b, c)
        y = g.node(
            "Gemm",
            [const_operand(g, node, a), const_operand(g, node, b)],
            alpha=abs(alpha),
            transA=transA,
            transB=transB,
        )
        out = Flow(y, g.scale_sum(*(v.scale for v in (a, b) if isinstance(v, Flow))))
        if isinstance(c, Flow):
            shape = node.out_shapes[0]
            cf = g.map(
                c, lambda t: g.expand_to(g.node("Mul", [t, g.f32(abs(beta))]), c.shape, shape)
            )
            out = g.add([out, cf])
        return out

    def backward(self, g, node, grads, a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
        (gy,) = grads
        raw = a
        a, b, c = _resolved(g, node, a, b, c)
        if (
            isinstance(raw, Flow) and raw.per_channel and not transA
        ):  # (N, K): one unit per contracted feature
            a = raw
        ta, tb = const_operand(g, node, a), const_operand(g, node, b)
        alpha = abs(alpha)
        da = db = None
        if _wants(a):
            da = (
                g.node("Gemm", [gy.tensor, tb], alpha=alpha, transB=1 - transB)
                if not transA
                else g.node("Gemm", [tb, gy.tensor], alpha=alpha, transA=transB, transB=1)
            )
            da = Flow(da, g.scale_sum(gy.scale, *_scales(b)))
        if _wants(b):
            db = (
                g.node("Gemm", [ta, gy.tensor], alpha=alpha, transA=1 - transA)
                if not transB
                else g.node("Gemm", [gy.tensor, ta], alpha=alpha, transA=1, transB=transA)
            )
            if a.per_channel:
                k = a.shape[1]
                db = _per_input_channel(g, a, db, (1, k) if transB else (k, 1), gy)
            else:
                db = Flow(db, g.scale_sum(gy.scale, *_scales(a)))
        dc = None
        if isinstance(c, Flow) and c.needs_grad:
            dc = g.map(
                gy,
                lambda t: g.reduce_to(
                    g.node("Mul", [t, g.f32(abs(beta))]), node.out_shapes[0], c.shape
                ),
            )
        return [da, db, dc]


def _wants(v: object) -> bool:
    return isinstance(v, Flow) and v.needs_grad


def _scales(v: object) -> list[str]:
    return [v.scale] if isinstance(v, Flow) else []


def _swap_last(g: FlowBuilder, t: str, rank: int) -> str:
    return g.node("Transpose", [t], perm=[*range(rank - 2), rank - 1, rank - 2])


@flow_rule("MatMul")
class MatMul(FlowRule):
    """Y = A @ B with numpy broadcasting; either operand may be the weight, or neither."""

    rescales = True
    channel_units = True

    def forward(self, g, node, a, b):
        if len(a.shape) < 2 or len(b.shape) < 2:
            raise OnnxflowError(f"node {node.name!r}: MatMul with a 1-D operand is not supported")
        a, b = _resolved(g, node, a, b)
        y = g.node("MatMul", [const_operand(g, node, a), const_operand(g, node, b)])
        return Flow(y, g.scale_sum(*(v.scale for v in (a, b) if isinstance(v, Flow))))

    def backward(self, g, node, grads, a, b):
        (gy,) = grads
        y_shape = node.out_shapes[0]
        raw = a
        a, b = _resolved(g, node, a, b)
        # (N, K) @ (K, M): one unit per contracted feature for the weight's flow
        per_feature = isinstance(raw, Flow) and raw.per_channel and len(raw.shape) == 2
        ta, tb = const_operand(g, node, a), const_operand(g, node, b)
        da = db = None
        if _wants(a):
            t = g.node("MatMul", [gy.tensor, _swap_last(g, tb, len(b.shape))])
            full = (*y_shape[:-1], a.shape[-1])
            da = Flow(g.reduce_to(t, full, a.shape), g.scale_sum(gy.scale, *_scales(b)))
        if _wants(b):
            if len(b.shape) == 2 and len(y_shape) > 2:  # fold the batch into the contraction
                k = a.shape[-1]
                t = g.node(
                    "Gemm",
                    [g.reshape(ta, [-1, k]), g.reshape(gy.tensor, [-1, b.shape[1]])],
                    transA=1,
                )
            else:
                if per_feature and len(b.shape) == 2:
                    t = g.node("MatMul", [_swap_last(g, raw.tensor, 2), gy.tensor])
                    db = _per_input_channel(g, raw, t, (raw.shape[1], 1), gy)
                    return [da, db]
                t = g.node("MatMul", [_swap_last(g, ta, len(a.shape)), gy.tensor])
                t = g.reduce_to(t, (*y_shape[:-2], b.shape[-2], b.shape[-1]), b.shape)
            db = Flow(t, g.scale_sum(gy.scale, *_scales(a)))
        return [da, db]
