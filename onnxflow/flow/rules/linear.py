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

Pointwise convolutions (1x1, stride 1, no padding, one group: most of a ResNet's layers) run
all three products as matrix products, which onnxruntime's CPU kernels compute faster than
Conv and ConvTranspose (no im2col, no col2im). Depthwise convolutions (MobileNet,
EfficientNet) gather their input per kernel tap, channels last, and weigh the taps with one
Mul and one ReduceSum (`_Depthwise`): for the weight flow always, and forward and backward on
small maps, where onnxruntime's grouped Conv and ConvTranspose (one channel at a time) are
slowest. On maps of a few positions (the 2x2 maps at 64x64) the forward and backward
products take the weight as the wide GEMM operand (`_narrow`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from onnx import TensorProto

from onnxflow.errors import OnnxflowError
from onnxflow.flow.builder import Const, Flow, FlowBuilder, NodeContext, Shape
from onnxflow.flow.registry import FlowRule, flow_rule


def _operand(g: FlowBuilder, node: NodeContext, v: Flow | Const) -> str:
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


def _perm_swap01(nd: int) -> list[int]:
    return [1, 0, *range(2, nd + 2)]


def _fit(g: FlowBuilder, x: str, have: Sequence[int], want: Sequence[int]) -> str:
    """Crop or zero-pad the trailing spatial dims of `x` (N, C, *have) to `want`."""
    if list(have) == list(want):
        return x
    nd = len(want)
    axes = list(range(2, nd + 2))
    if any(h > w for h, w in zip(have, want, strict=True)):
        stops = [min(h, w) for h, w in zip(have, want, strict=True)]
        x = g.node("Slice", [x, g.i64([0] * nd), g.i64(stops), g.i64(axes)])
    if any(h < w for h, w in zip(have, want, strict=True)):
        extra = [max(0, w - h) for h, w in zip(have, want, strict=True)]
        x = g.node("Pad", [x, g.i64([0, 0] + [0] * nd + [0, 0] + extra)])
    return x


def conv_pads(
    in_sp: Shape,
    k: Shape,
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int] | None,
    auto_pad: str,
) -> list[int]:
    """Explicit `[begins..., ends...]` pads of a Conv, resolving auto_pad."""
    nd = len(k)
    if auto_pad in ("NOTSET", ""):
        return list(pads) if pads else [0] * 2 * nd
    if auto_pad == "VALID":
        return [0] * 2 * nd
    begins, ends = [], []
    for i in range(nd):
        out = -(-in_sp[i] // strides[i])
        total = max(0, (out - 1) * strides[i] + (k[i] - 1) * dilations[i] + 1 - in_sp[i])
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _conv_full(
    g: FlowBuilder,
    x: str,
    w: str,
    *,
    group: int,
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    in_sp: Shape,
    k: Shape,
    want: Shape,
) -> str:
    """Conv whose output is cropped/padded to spatial size `want`; end pads as needed."""
    nd = len(k)
    begins = list(pads[:nd])
    ends = [
        max(0, (want[i] - 1) * strides[i] + (k[i] - 1) * dilations[i] + 1 - in_sp[i] - begins[i])
        for i in range(nd)
    ]
    y = g.node(
        "Conv",
        [x, w],
        group=group,
        strides=list(strides),
        dilations=list(dilations),
        pads=begins + ends,
        kernel_shape=list(k),
    )
    have = [
        (in_sp[i] + begins[i] + ends[i] - ((k[i] - 1) * dilations[i] + 1)) // strides[i] + 1
        for i in range(nd)
    ]
    return _fit(g, y, have, want)


def _conv_transpose_full(
    g: FlowBuilder,
    y: str,
    w: str,
    *,
    group: int,
    strides: Sequence[int],
    dilations: Sequence[int],
    begins: Sequence[int],
    in_sp: Shape,
    k: Shape,
    want: Shape,
) -> str:
    """ConvTranspose with head pads `begins`, cropped/padded to spatial size `want`."""
    nd = len(k)
    x = g.node(
        "ConvTranspose",
        [y, w],
        group=group,
        strides=list(strides),
        dilations=list(dilations),
        pads=list(begins) + [0] * nd,
        kernel_shape=list(k),
    )
    have = [
        strides[i] * (in_sp[i] - 1) + (k[i] - 1) * dilations[i] + 1 - begins[i] for i in range(nd)
    ]
    return _fit(g, x, have, want)


def _correlate(
    g: FlowBuilder,
    data: str,
    data_shape: Shape,
    kern: str,
    kern_shape: Shape,
    *,
    group: int,
    strides: Sequence[int],
    dilations: Sequence[int],
    begins: Sequence[int],
    k: Shape,
) -> str:
    """sum_y kern[n, go, y] * data_pad[n, gi, y*stride + j*dilation] -> (G*Co, Ci, *k).

    The weight-gradient of a (transposed) convolution, as one grouped Conv: the per-group
    data channels become the batch, the batch folds into the channels, `kern` is the kernel.
    """
    n, c = data_shape[:2]
    sp = data_shape[2:]
    nd = len(sp)
    cg = c // group
    d = g.reshape(data, [n, group, cg, *sp])
    d = g.node("Transpose", [d], perm=[2, 1, 0, *range(3, nd + 3)])
    d = g.reshape(d, [cg, group * n, *sp])
    kt = g.node("Transpose", [kern], perm=_perm_swap01(nd))  # (G*Co, N, *ksp)
    ksp = kern_shape[2:]
    out = _conv_full(
        g,
        d,
        kt,
        group=group,
        strides=dilations,
        dilations=strides,
        pads=list(begins) + [0] * nd,
        in_sp=sp,
        k=ksp,
        want=k,
    )
    return g.node("Transpose", [out], perm=_perm_swap01(nd))


# Above this many float32 elements the im2col matrix is not built; a grouped Conv is used.
_IM2COL_LIMIT = 64 * 2**20


def _im2col_grad(
    g: FlowBuilder,
    x: str,
    x_shape: Shape,
    gy: str,
    gy_shape: Shape,
    *,
    k: Shape,
    group: int,
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
) -> str | None:
    """Weight-gradient of a Conv as im2col (one Slice per kernel tap) and one matrix
    product: dW[o, i, k] = sum_p b[o, p] * x_pad[i, p*stride + k*dilation].

    Returns None when the im2col matrix would be too large.
    """
    n, c = x_shape[:2]
    sp, out_sp = x_shape[2:], gy_shape[2:]
    nd, cout, taps = len(k), gy_shape[1], int(np.prod(k))
    if c * taps * n * int(np.prod(out_sp)) > _IM2COL_LIMIT:
        return None
    begins = list(pads[:nd])
    ends = [
        max(0, (out_sp[i] - 1) * strides[i] + (k[i] - 1) * dilations[i] + 1 - sp[i] - begins[i])
        for i in range(nd)
    ]
    if n > 1:
        x = g.node("Transpose", [x], perm=_perm_swap01(nd))
        gy = g.node("Transpose", [gy], perm=_perm_swap01(nd))
    if taps > 1 and any(st > 1 for st in strides):
        # Strided taps: one Conv whose kernel is one-hot per tap copies them all, several
        # times faster than strided Slices in onnxruntime.
        eye = np.eye(taps, dtype=np.float32).reshape(taps, 1, *k)
        col = g.node(
            "Conv",
            [g.reshape(x, [c * n, 1, *sp]), g.const(eye, "taps")],
            kernel_shape=list(k),
            strides=list(strides),
            dilations=list(dilations),
            pads=begins + ends,
        )  # (C*N, taps, *out_sp)
        if n > 1:
            col = g.node("Transpose", [g.reshape(col, [c, n, taps, -1])], perm=[0, 2, 1, 3])
    else:
        if any(begins) or any(ends):
            x = g.node("Pad", [x, g.i64([0, 0, *begins, 0, 0, *ends])])
        axes = g.i64(list(range(2, nd + 2)))
        steps = g.i64(list(strides))
        cols = []
        for tap in itertools.product(*(range(d) for d in k)):
            starts = [tap[i] * dilations[i] for i in range(nd)]
            stops = [starts[i] + (out_sp[i] - 1) * strides[i] + 1 for i in range(nd)]
            whole = taps == 1 and set(strides) == {1} and stops == list(sp) and not any(pads)
            piece = x if whole else g.node("Slice", [x, g.i64(starts), g.i64(stops), axes, steps])
            cols.append(g.reshape(piece, [c, 1, -1]))
        col = cols[0] if taps == 1 else g.node("Concat", cols, axis=1)
    col = g.reshape(col, [c, taps, -1])  # (C, taps, N*P)
    b = g.reshape(gy, [cout, -1])
    if group == 1:
        dw = g.node("Gemm", [b, g.reshape(col, [c * taps, -1])], transB=1)
    elif group == c == cout:  # depthwise: one input and one output channel per group
        dw = g.reduce("ReduceSum", g.node("Mul", [col, g.reshape(b, [c, 1, -1])]), [2], 0)
    else:
        cols_g = g.reshape(col, [group, (c // group) * taps, -1])
        dw = g.node(
            "MatMul",
            [
                g.reshape(b, [group, cout // group, -1]),
                g.node("Transpose", [cols_g], perm=[0, 2, 1]),
            ],
        )
    return g.reshape(dw, [cout, c // group, *k])


# Depthwise convolutions whose input has at most this many spatial positions run forward
# and backward as a gather (below) rather than as a Conv / ConvTranspose of `group`
# channels: onnxruntime runs a grouped Conv one group at a time (an im2col and a GEMM per
# channel, ~0.2 us each, measured), which dominates on the small late maps of MobileNet and
# EfficientNet (960 channels of 2x2). Above it (8x8 and more) the grouped ops are as fast
# or faster, and the gather writes taps times the input.
_GATHER_MAX_POSITIONS = 16


def _tap_index(
    in_sp: Shape,
    out_sp: Shape,
    k: Shape,
    strides: Sequence[int],
    dilations: Sequence[int],
    begins: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Where each kernel tap of a convolution reads and writes, as flat spatial positions.

    `fwd[t, p]` is the input position that tap `t` reads for output position `p`, and
    `bwd[t, q]` the output position whose tap `t` reads input position `q`; a pair that
    falls in the padding (or that no output reaches) points one past the end, at a row of
    zeros. Both are exact: each (tap, output) pair reads at most one input and each (tap,
    input) pair is read by at most one output.
    """
    n_in, n_out = int(np.prod(in_sp)), int(np.prod(out_sp))
    taps = list(itertools.product(*(range(d) for d in k)))
    fwd = np.full((len(taps), n_out), n_in, np.int64)
    bwd = np.full((len(taps), n_in), n_out, np.int64)
    out_pos = np.indices(out_sp).reshape(len(out_sp), -1)  # (nd, P)
    for t, tap in enumerate(taps):
        pos = [out_pos[i] * strides[i] + tap[i] * dilations[i] - begins[i] for i in range(len(k))]
        ok = np.all([(p >= 0) & (p < in_sp[i]) for i, p in enumerate(pos)], axis=0)
        flat = np.ravel_multi_index([p[ok] for p in pos], in_sp)
        fwd[t, ok] = flat
        bwd[t, flat] = np.flatnonzero(ok)
    return fwd, bwd


def _live_taps(
    in_sp: Shape,
    out_sp: Shape,
    k: Shape,
    strides: Sequence[int],
    dilations: Sequence[int],
    begins: Sequence[int],
) -> list[tuple[int, int]]:
    """Per spatial axis, the [start, stop) range of kernel taps that read the input (not
    only padding) at some output position. The positions a tap reads move right as the
    tap does, so the live taps are one range; the whole kernel where none is live."""
    box = []
    for i, size in enumerate(k):
        reach = [
            t
            for t in range(size)
            if any(
                0 <= o * strides[i] + t * dilations[i] - begins[i] < in_sp[i]
                for o in range(out_sp[i])
            )
        ]
        box.append((min(reach), max(reach) + 1) if reach else (0, size))
    return box


def _positions_first(g: FlowBuilder, node: NodeContext, x: str, shape: Shape) -> str:
    """(N, C, *sp) -> (positions, N, C), made once per node and tensor."""
    key = f"positions_first:{x}"
    if key not in node.saved:
        n, c = shape[:2]
        node.saved[key] = g.node("Transpose", [g.reshape(x, [n, c, -1])], perm=[2, 0, 1])
    return node.saved[key]


def _channels_last(g: FlowBuilder, node: NodeContext, x: str, shape: Shape) -> str:
    """(N, C, *sp) -> (positions + 1, N, C): positions first so that a Gather along axis 0
    copies rows of N*C contiguous floats, and one more row of zeros for the padding."""
    return g.node("Pad", [_positions_first(g, node, x, shape), g.i64([0, 0, 0, 1, 0, 0])])


def _taps_times(g: FlowBuilder, col: str, w_taps: str, shape: Shape) -> str:
    """sum_t col[t, p, n, c] * w[t, c] -> (N, C, *sp): the depthwise product in the
    channels-last layout, where each Mul broadcasts over long rows of channels."""
    y = g.reduce("ReduceSum", g.node("Mul", [col, w_taps]), [0], 0)  # (P, N, C)
    return g.reshape(g.node("Transpose", [y], perm=[1, 2, 0]), list(shape))


class _Depthwise:
    """A depthwise convolution (one input channel per output channel) as gathers.

    Every product is a Gather of the input in channels-last layout by a static tap index
    (`_tap_index`), one Mul and one ReduceSum: forward `y[p, c] = sum_t x[fwd[t, p], c] w[t,
    c]`, backward `dx[q, c] = sum_t dy[bwd[t, q], c] w[t, c]`, and the weight flow
    `dw[t, c] = sum_p x[fwd[t, p], c] dy[p, c]` (summed over the batch too), which reuses
    the forward's gathered input. Any stride, dilation, padding and rank; the channels stay
    apart, so per-channel units pass through.

    Taps that read only padding, whatever the output position (a 5x5 kernel on a 2x2 map:
    16 of its 25 taps), are left out: the products use the box of the other taps, and
    their weight flow is zero.
    """

    def __init__(
        self,
        x_shape: Shape,
        y_shape: Shape,
        k: Shape,
        strides: Sequence[int],
        dilations: Sequence[int],
        pads: Sequence[int],
    ) -> None:
        self.x_shape, self.y_shape, self.k = tuple(x_shape), tuple(y_shape), tuple(k)
        begins = list(pads[: len(k)])
        self.box = _live_taps(x_shape[2:], y_shape[2:], k, strides, dilations, begins)
        box_k = tuple(stop - start for start, stop in self.box)
        self.taps = int(np.prod(box_k))
        box_begins = [
            b - start * d for b, (start, _), d in zip(begins, self.box, dilations, strict=True)
        ]
        self.fwd, self.bwd = _tap_index(
            x_shape[2:], y_shape[2:], box_k, strides, dilations, box_begins
        )

    @property
    def cropped(self) -> bool:
        """Whether some taps read only padding and are left out."""
        return any(start > 0 or stop < k for (start, stop), k in zip(self.box, self.k, strict=True))

    @property
    def gathers(self) -> bool:
        """Whether forward and backward run as gathers (small maps), not grouped convs."""
        return int(np.prod(self.x_shape[2:])) <= _GATHER_MAX_POSITIONS

    def columns(self, g: FlowBuilder, node: NodeContext, x: str) -> str:
        """x gathered per tap, (taps, P, N, C): built once per node, shared by the forward
        and the weight flow."""
        key = f"columns:{x}"
        if key not in node.saved:
            node.saved[key] = g.node(
                "Gather",
                [_channels_last(g, node, x, self.x_shape), g.const(self.fwd, "taps")],
                axis=0,
            )
        return node.saved[key]

    def weight_taps(self, g: FlowBuilder, node: NodeContext, w: str) -> str:
        """The weight (C, 1, *k) as (taps, 1, 1, C), to broadcast over (taps, P, N, C);
        built once per node, shared by forward and backward."""
        key = f"weight_taps:{w}"
        if key not in node.saved:
            c = self.x_shape[1]
            if self.cropped:
                starts, stops = zip(*self.box, strict=True)
                axes = list(range(2, len(self.k) + 2))
                w = g.node("Slice", [w, g.i64(list(starts)), g.i64(list(stops)), g.i64(axes)])
            wt = g.node("Transpose", [g.reshape(w, [c, self.taps])])
            node.saved[key] = g.reshape(wt, [self.taps, 1, 1, c])
        return node.saved[key]

    def fits(self) -> bool:
        """Whether the gathered input stays under the im2col size limit."""
        return self.taps * int(np.prod(self.y_shape)) <= _IM2COL_LIMIT

    def forward(self, g: FlowBuilder, node: NodeContext, x: str, w: str) -> str:
        col = self.columns(g, node, x)
        return _taps_times(g, col, self.weight_taps(g, node, w), self.y_shape)

    def backward(self, g: FlowBuilder, node: NodeContext, gy: str, w: str) -> str:
        taps = g.const(self.bwd, "taps")
        col = g.node("Gather", [_channels_last(g, node, gy, self.y_shape), taps], axis=0)
        return _taps_times(g, col, self.weight_taps(g, node, w), self.x_shape)

    def weight_flow(
        self, g: FlowBuilder, node: NodeContext, x: str, gy: str, w_shape: Shape
    ) -> str:
        dy = _positions_first(g, node, gy, self.y_shape)  # (P, N, C)
        prod = g.node("Mul", [self.columns(g, node, x), dy])
        dw = g.reduce("ReduceSum", prod, [1, 2], 0)  # (taps, C)
        box_k = [stop - start for start, stop in self.box]
        dw = g.reshape(g.node("Transpose", [dw]), [*w_shape[:2], *box_k])
        if self.cropped:  # zeros for the taps that read only padding
            heads = [start for start, _ in self.box]
            tails = [k - stop for (_, stop), k in zip(self.box, self.k, strict=True)]
            dw = g.node("Pad", [dw, g.i64([0, 0, *heads, 0, 0, *tails])])
        return dw


def _pointwise(k: Shape, strides, dilations, pads, group: int) -> bool:
    """Whether a Conv is a plain matrix product over channels (1x1, stride 1, no padding)."""
    return group == 1 and all(d == 1 for d in (*k, *strides)) and not any(pads)


def _pointwise_forward(g: FlowBuilder, x: str, x_shape: Shape, w: str, w_shape: Shape) -> str:
    """y[n, o, p] = sum_i w[o, i] x[n, i, p]."""
    n, c, sp = x_shape[0], x_shape[1], x_shape[2:]
    w2 = g.reshape(w, w_shape[:2])
    p = int(np.prod(sp))
    if _narrow(x_shape) and n * p > 1:  # x^T @ W^T, the weight as the wide operand
        xt = g.node("Transpose", [g.reshape(x, [n, c, p])], perm=[0, 2, 1])
        y = g.node("Gemm", [g.reshape(xt, [n * p, c]), w2], transB=1)  # (N*P, O)
        # The Reshape keeps onnxruntime from folding the Transpose back into the Gemm.
        y = g.node("Transpose", [g.reshape(y, [n, p, w_shape[0]])], perm=[0, 2, 1])
    else:
        y = g.node("MatMul", [w2, g.reshape(x, [n, c, -1])])
    return g.reshape(y, [n, w_shape[0], *sp])


def _pointwise_backward(g: FlowBuilder, gy: str, gy_shape: Shape, w: str, w_shape: Shape) -> str:
    """dx[n, i, p] = sum_o w[o, i] gy[n, o, p]."""
    n, o, sp = gy_shape[0], gy_shape[1], gy_shape[2:]
    w2 = g.reshape(w, w_shape[:2])
    if _narrow(gy_shape):  # gy^T @ W, the weight as the wide operand
        p = int(np.prod(sp))
        gyt = g.node("Transpose", [g.reshape(gy, [n, o, p])], perm=[0, 2, 1])
        dx = g.node("Gemm", [g.reshape(gyt, [n * p, o]), w2])  # (N*P, I)
        dx = g.node("Transpose", [g.reshape(dx, [n, p, w_shape[1]])], perm=[0, 2, 1])
    elif n == 1:
        dx = g.node("Gemm", [w2, g.reshape(gy, [o, -1])], transA=1)
    else:
        dx = g.node("MatMul", [g.node("Transpose", [w2]), g.reshape(gy, [n, o, -1])])
    return g.reshape(dx, [n, w_shape[1], *sp])


def _conv_attrs(w: Const, x_shape: Shape, strides, dilations, pads, auto_pad):
    k = tuple(w.shape[2:])
    nd = len(k)
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    return (
        k,
        strides,
        dilations,
        conv_pads(tuple(x_shape[2:]), k, strides, dilations, pads, auto_pad),
    )


def _depthwise(x: Flow, w: Flow | Const, group: int) -> bool:
    """Whether each output channel reads only the same input channel (multiplier 1)."""
    return group > 1 and group == x.shape[1] == w.shape[0]


# A product by a weight whose other operand has fewer columns than this (positions times
# batch) is written with the weight as the right-hand, wide operand: onnxruntime's CPU GEMM
# computes blocks of 16 columns, so W @ x or W^T @ gy with 4 columns (ResNet-50's and
# MobileNet's 2x2 maps at 64x64) does 4x the arithmetic it needs. Measured on those layers'
# weights (1280x320 to 512x2048), one or two threads: 30-40% faster that way.
_NARROW_COLUMNS = 8


def _narrow(shape: Shape) -> bool:
    """Whether a flow (N, C, *sp) has fewer than `_NARROW_COLUMNS` positions times batch."""
    return shape[0] * int(np.prod(shape[2:])) < _NARROW_COLUMNS


def _narrow_col2im_fits(x_shape: Shape, k: Shape) -> bool:
    """Whether `_narrow_transpose`'s gathered columns (taps x input) stay small: a kernel
    as large as its input (a 1x1 output of a large map) would gather taps x positions."""
    gathered = int(np.prod(k)) * int(np.prod(x_shape))
    return gathered <= _NARROW_GATHER_LIMIT


# Above this many float32 elements `_narrow_transpose` is not used (ConvTranspose is).
_NARROW_GATHER_LIMIT = 2**22


def _narrow_transpose(
    g: FlowBuilder,
    gy: str,
    y_shape: Shape,
    w: str,
    w_shape: Shape,
    x_shape: Shape,
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
) -> str:
    """The transpose of a one-group Conv on a narrow output (`_narrow`): the columns
    gy^T @ W (batch and positions as the rows, the weight as the wide operand), then
    col2im as one Gather of (position, tap) rows by a static index and a sum over taps.

    dx[n, c, q] = sum_t col[n, p, c, t] for the output position p whose tap t reads q."""
    n, o = y_shape[:2]
    cin, k = w_shape[1], tuple(w_shape[2:])
    taps, p = int(np.prod(k)), int(np.prod(y_shape[2:]))
    gyt = g.node("Transpose", [g.reshape(gy, [n, o, p])], perm=[0, 2, 1])  # (N, P, O)
    col = g.node("Gemm", [g.reshape(gyt, [n * p, o]), g.reshape(w, [o, cin * taps])])
    col = g.node("Transpose", [g.reshape(col, [n, p, cin, taps])], perm=[1, 3, 0, 2])
    col = g.node("Pad", [g.reshape(col, [p * taps, n * cin]), g.i64([0, 0, 1, 0])])
    _, bwd = _tap_index(x_shape[2:], y_shape[2:], k, strides, dilations, pads[: len(k)])
    rows = np.where(bwd < p, bwd * taps + np.arange(taps)[:, None], p * taps)
    dx = g.reduce("ReduceSum", g.node("Gather", [col, g.const(rows, "taps")], axis=0), [0], 0)
    dx = g.node("Transpose", [g.reshape(dx, [-1, n, cin])], perm=[1, 2, 0])  # (N, C, Q)
    return g.reshape(dx, list(x_shape))


def _flipped_begins(k: Shape, strides, dilations, pads) -> list[int] | None:
    """Head pads of the stride-1 convolution with the flipped kernel that is a depthwise
    Conv's transpose, or None where there is none (a stride above 1, a pad beyond the
    kernel's extent).

    onnxruntime's grouped ConvTranspose was measured 20-35% slower than the grouped Conv on
    the same maps (MobileNet's and EfficientNet's 8x8 to 32x32 depthwise layers)."""
    nd = len(k)
    if any(st != 1 for st in strides):
        return None
    begins = [(k[i] - 1) * dilations[i] - pads[i] for i in range(nd)]
    return begins if all(b >= 0 for b in begins) else None


def _flip(g: FlowBuilder, w: str, nd: int) -> str:
    """The kernel reversed along every spatial axis."""
    ends = np.iinfo(np.int64).min
    return g.node(
        "Slice",
        [w, g.i64([-1] * nd), g.i64([ends] * nd), g.i64(list(range(2, nd + 2))), g.i64([-1] * nd)],
    )


def _depthwise_plan(
    node: NodeContext, x: Flow, w: Flow | Const, group: int, k: Shape, strides, dilations, pads
) -> _Depthwise | None:
    """The gather plan of a depthwise Conv node (made once, shared by forward and
    backward), or None for any other Conv."""
    if not _depthwise(x, w, group):
        return None
    if "depthwise" not in node.saved:
        node.saved["depthwise"] = _Depthwise(
            x.shape, node.out_shapes[0], k, strides, dilations, pads
        )
    return node.saved["depthwise"]


def _resolved(g: FlowBuilder, node: NodeContext, *vs: object) -> list:
    """The operands in one unit each, computed once per node (forward) and reused (backward)."""
    if "resolved" not in node.saved:
        node.saved["resolved"] = [g.resolve(v) if isinstance(v, Flow) else v for v in vs]
    return node.saved["resolved"]


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
        if _pointwise(k, strides, dilations, pads, group):
            y = _pointwise_forward(g, x.tensor, x.shape, _operand(g, node, w), w.shape)
            return Flow(y, g.scale_sum(x.scale, *_scales(w)))
        plan = _depthwise_plan(node, x, w, group, k, strides, dilations, pads)
        if plan is not None and plan.gathers and plan.fits():
            y = plan.forward(g, node, x.tensor, _operand(g, node, w))
            return Flow(y, g.scale_sum(x.scale, *_scales(w)), unit_shape=x.unit_shape)
        y = g.node(
            "Conv",
            [x.tensor, _operand(g, node, w)],
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
        wt = _operand(g, node, w)
        plan = _depthwise_plan(node, x, w, group, k, strides, dilations, pads)
        if plan is not None and not plan.fits():
            plan = None
        dx = dw = None
        if x.needs_grad:
            if _pointwise(k, strides, dilations, pads, group):
                tx = _pointwise_backward(g, gy.tensor, y_shape, wt, w.shape)
            elif plan is not None and plan.gathers:
                tx = plan.backward(g, node, gy.tensor, wt)
            elif group == 1 and _narrow(y_shape) and _narrow_col2im_fits(x.shape, k):
                tx = _narrow_transpose(
                    g, gy.tensor, y_shape, wt, w.shape, x.shape, strides, dilations, pads
                )
            elif plan is not None and (begins := _flipped_begins(k, strides, dilations, pads)):
                tx = _conv_full(
                    g,
                    gy.tensor,
                    _flip(g, wt, nd),
                    group=group,
                    strides=strides,
                    dilations=dilations,
                    pads=begins,
                    in_sp=y_shape[2:],
                    k=k,
                    want=x.shape[2:],
                )
            else:
                tx = _conv_transpose_full(
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
                t = _im2col_grad(
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
                ) or _correlate(
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
        y = g.node("ConvTranspose", [x.tensor, _operand(g, node, w)], **attrs)
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
        wt = _operand(g, node, w)
        dx = dw = None
        if x.needs_grad:
            dx = g.like(
                _conv_full(
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
            t = _correlate(
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
            [_operand(g, node, a), _operand(g, node, b)],
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
        ta, tb = _operand(g, node, a), _operand(g, node, b)
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
        y = g.node("MatMul", [_operand(g, node, a), _operand(g, node, b)])
        return Flow(y, g.scale_sum(*(v.scale for v in (a, b) if isinstance(v, Flow))))

    def backward(self, g, node, grads, a, b):
        (gy,) = grads
        y_shape = node.out_shapes[0]
        raw = a
        a, b = _resolved(g, node, a, b)
        # (N, K) @ (K, M): one unit per contracted feature for the weight's flow
        per_feature = isinstance(raw, Flow) and raw.per_channel and len(raw.shape) == 2
        ta, tb = _operand(g, node, a), _operand(g, node, b)
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
