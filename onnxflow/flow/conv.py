"""Convolution products written as ONNX nodes, for the weight-layer flow rules.

The flow through a convolution needs three products per layer: the forward flow (the
convolution of |W|), the backward flow (its transpose) and the weight flow (the weight
gradient: a correlation of the forward flow by the backward flow). onnxruntime runs some
spellings of each much faster than others, so each has several, chosen by shape:

- pointwise convolutions (1x1, stride 1, no padding, one group) as matrix products
  (`pointwise_forward`, `pointwise_backward`, the `im2col_grad` GEMM);
- depthwise convolutions as gathers per kernel tap, channels last (`Depthwise`);
- products on maps of a few positions with the weight as the wide GEMM operand
  (`narrow`, `narrow_transpose`);
- otherwise Conv and ConvTranspose cropped to the wanted size (`conv_full`,
  `conv_transpose_full`), the weight gradient as im2col (`im2col_grad`) or, for very
  large inputs, one grouped Conv (`correlate`).

Every function takes and returns flow-model tensor names; units (log-scales) are the
rules' business (`onnxflow.flow.rules.linear`). The thresholds were measured on
onnxruntime's CPU kernels; each path is tested against the others.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from onnxflow.flow.builder import FlowBuilder, NodeContext, Shape


def perm_swap01(nd: int) -> list[int]:
    return [1, 0, *range(2, nd + 2)]


def fit(g: FlowBuilder, x: str, have: Sequence[int], want: Sequence[int]) -> str:
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


def end_pads(
    in_sp: Shape,
    out_sp: Shape,
    k: Shape,
    strides: Sequence[int],
    dilations: Sequence[int],
    begins: Sequence[int],
) -> list[int]:
    """The fewest end pads with which a convolution over `in_sp` (head pads `begins`)
    reaches `out_sp` output positions."""
    return [
        max(0, (out_sp[i] - 1) * strides[i] + (k[i] - 1) * dilations[i] + 1 - in_sp[i] - begins[i])
        for i in range(len(k))
    ]


def conv_full(
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
    ends = end_pads(in_sp, want, k, strides, dilations, begins)
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
    return fit(g, y, have, want)


def conv_transpose_full(
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
    return fit(g, x, have, want)


def correlate(
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
    kt = g.node("Transpose", [kern], perm=perm_swap01(nd))  # (G*Co, N, *ksp)
    ksp = kern_shape[2:]
    out = conv_full(
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
    return g.node("Transpose", [out], perm=perm_swap01(nd))


# Above this many float32 elements the im2col matrix is not built; a grouped Conv is used.
IM2COL_LIMIT = 64 * 2**20


def im2col_grad(
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
    if c * taps * n * int(np.prod(out_sp)) > IM2COL_LIMIT:
        return None
    begins = list(pads[:nd])
    ends = end_pads(sp, out_sp, k, strides, dilations, begins)
    if n > 1:
        x = g.node("Transpose", [x], perm=perm_swap01(nd))
        gy = g.node("Transpose", [gy], perm=perm_swap01(nd))
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
GATHER_MAX_POSITIONS = 16


def tap_index(
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


def live_taps(
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


def positions_first(g: FlowBuilder, node: NodeContext, x: str, shape: Shape) -> str:
    """(N, C, *sp) -> (positions, N, C), made once per node and tensor."""
    n, c = shape[:2]
    return node.once(
        f"positions_first:{x}",
        lambda: g.node("Transpose", [g.reshape(x, [n, c, -1])], perm=[2, 0, 1]),
    )


def channels_last(g: FlowBuilder, node: NodeContext, x: str, shape: Shape) -> str:
    """(N, C, *sp) -> (positions + 1, N, C): positions first so that a Gather along axis 0
    copies rows of N*C contiguous floats, and one more row of zeros for the padding."""
    return g.node("Pad", [positions_first(g, node, x, shape), g.i64([0, 0, 0, 1, 0, 0])])


def taps_times(g: FlowBuilder, col: str, w_taps: str, shape: Shape) -> str:
    """sum_t col[t, p, n, c] * w[t, c] -> (N, C, *sp): the depthwise product in the
    channels-last layout, where each Mul broadcasts over long rows of channels."""
    y = g.reduce("ReduceSum", g.node("Mul", [col, w_taps]), [0], 0)  # (P, N, C)
    return g.reshape(g.node("Transpose", [y], perm=[1, 2, 0]), list(shape))


class Depthwise:
    """A depthwise convolution (one input channel per output channel) as gathers.

    Every product is a Gather of the input in channels-last layout by a static tap index
    (`tap_index`), one Mul and one ReduceSum: forward `y[p, c] = sum_t x[fwd[t, p], c] w[t,
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
        self.box = live_taps(x_shape[2:], y_shape[2:], k, strides, dilations, begins)
        box_k = tuple(stop - start for start, stop in self.box)
        self.taps = int(np.prod(box_k))
        box_begins = [
            b - start * d for b, (start, _), d in zip(begins, self.box, dilations, strict=True)
        ]
        self.fwd, self.bwd = tap_index(
            x_shape[2:], y_shape[2:], box_k, strides, dilations, box_begins
        )

    @property
    def cropped(self) -> bool:
        """Whether some taps read only padding and are left out."""
        return any(start > 0 or stop < k for (start, stop), k in zip(self.box, self.k, strict=True))

    @property
    def gathers(self) -> bool:
        """Whether forward and backward run as gathers (small maps), not grouped convs."""
        return int(np.prod(self.x_shape[2:])) <= GATHER_MAX_POSITIONS

    def columns(self, g: FlowBuilder, node: NodeContext, x: str) -> str:
        """x gathered per tap, (taps, P, N, C): built once per node, shared by the forward
        and the weight flow."""
        return node.once(
            f"columns:{x}",
            lambda: g.node(
                "Gather",
                [channels_last(g, node, x, self.x_shape), g.const(self.fwd, "taps")],
                axis=0,
            ),
        )

    def weight_taps(self, g: FlowBuilder, node: NodeContext, w: str) -> str:
        """The weight (C, 1, *k) as (taps, 1, 1, C), to broadcast over (taps, P, N, C);
        built once per node, shared by forward and backward."""
        return node.once(f"weight_taps:{w}", lambda: self._weight_taps(g, w))

    def _weight_taps(self, g: FlowBuilder, w: str) -> str:
        c = self.x_shape[1]
        if self.cropped:
            starts, stops = zip(*self.box, strict=True)
            axes = list(range(2, len(self.k) + 2))
            w = g.node("Slice", [w, g.i64(list(starts)), g.i64(list(stops)), g.i64(axes)])
        wt = g.node("Transpose", [g.reshape(w, [c, self.taps])])
        return g.reshape(wt, [self.taps, 1, 1, c])

    def fits(self) -> bool:
        """Whether the gathered input stays under the im2col size limit."""
        return self.taps * int(np.prod(self.y_shape)) <= IM2COL_LIMIT

    def forward(self, g: FlowBuilder, node: NodeContext, x: str, w: str) -> str:
        col = self.columns(g, node, x)
        return taps_times(g, col, self.weight_taps(g, node, w), self.y_shape)

    def backward(self, g: FlowBuilder, node: NodeContext, gy: str, w: str) -> str:
        taps = g.const(self.bwd, "taps")
        col = g.node("Gather", [channels_last(g, node, gy, self.y_shape), taps], axis=0)
        return taps_times(g, col, self.weight_taps(g, node, w), self.x_shape)

    def weight_flow(
        self, g: FlowBuilder, node: NodeContext, x: str, gy: str, w_shape: Shape
    ) -> str:
        dy = positions_first(g, node, gy, self.y_shape)  # (P, N, C)
        prod = g.node("Mul", [self.columns(g, node, x), dy])
        dw = g.reduce("ReduceSum", prod, [1, 2], 0)  # (taps, C)
        box_k = [stop - start for start, stop in self.box]
        dw = g.reshape(g.node("Transpose", [dw]), [*w_shape[:2], *box_k])
        if self.cropped:  # zeros for the taps that read only padding
            heads = [start for start, _ in self.box]
            tails = [k - stop for (_, stop), k in zip(self.box, self.k, strict=True)]
            dw = g.node("Pad", [dw, g.i64([0, 0, *heads, 0, 0, *tails])])
        return dw


def pointwise(k: Shape, strides, dilations, pads, group: int) -> bool:
    """Whether a Conv is a plain matrix product over channels (1x1, stride 1, no padding)."""
    return group == 1 and all(d == 1 for d in (*k, *strides)) and not any(pads)


def pointwise_forward(g: FlowBuilder, x: str, x_shape: Shape, w: str, w_shape: Shape) -> str:
    """y[n, o, p] = sum_i w[o, i] x[n, i, p]."""
    n, c, sp = x_shape[0], x_shape[1], x_shape[2:]
    w2 = g.reshape(w, w_shape[:2])
    p = int(np.prod(sp))
    if narrow(x_shape) and n * p > 1:  # x^T @ W^T, the weight as the wide operand
        xt = g.node("Transpose", [g.reshape(x, [n, c, p])], perm=[0, 2, 1])
        y = g.node("Gemm", [g.reshape(xt, [n * p, c]), w2], transB=1)  # (N*P, O)
        # The Reshape keeps onnxruntime from folding the Transpose back into the Gemm.
        y = g.node("Transpose", [g.reshape(y, [n, p, w_shape[0]])], perm=[0, 2, 1])
    else:
        y = g.node("MatMul", [w2, g.reshape(x, [n, c, -1])])
    return g.reshape(y, [n, w_shape[0], *sp])


def pointwise_backward(g: FlowBuilder, gy: str, gy_shape: Shape, w: str, w_shape: Shape) -> str:
    """dx[n, i, p] = sum_o w[o, i] gy[n, o, p]."""
    n, o, sp = gy_shape[0], gy_shape[1], gy_shape[2:]
    w2 = g.reshape(w, w_shape[:2])
    if narrow(gy_shape):  # gy^T @ W, the weight as the wide operand
        p = int(np.prod(sp))
        gyt = g.node("Transpose", [g.reshape(gy, [n, o, p])], perm=[0, 2, 1])
        dx = g.node("Gemm", [g.reshape(gyt, [n * p, o]), w2])  # (N*P, I)
        dx = g.node("Transpose", [g.reshape(dx, [n, p, w_shape[1]])], perm=[0, 2, 1])
    elif n == 1:
        dx = g.node("Gemm", [w2, g.reshape(gy, [o, -1])], transA=1)
    else:
        dx = g.node("MatMul", [g.node("Transpose", [w2]), g.reshape(gy, [n, o, -1])])
    return g.reshape(dx, [n, w_shape[1], *sp])


# A product by a weight whose other operand has fewer columns than this (positions times
# batch) is written with the weight as the right-hand, wide operand: onnxruntime's CPU GEMM
# computes blocks of 16 columns, so W @ x or W^T @ gy with 4 columns (ResNet-50's and
# MobileNet's 2x2 maps at 64x64) does 4x the arithmetic it needs. Measured on those layers'
# weights (1280x320 to 512x2048), one or two threads: 30-40% faster that way.
NARROW_COLUMNS = 8


def narrow(shape: Shape) -> bool:
    """Whether a flow (N, C, *sp) has fewer than `NARROW_COLUMNS` positions times batch."""
    return shape[0] * int(np.prod(shape[2:])) < NARROW_COLUMNS


def narrow_col2im_fits(x_shape: Shape, k: Shape) -> bool:
    """Whether `narrow_transpose`'s gathered columns (taps x input) stay small: a kernel
    as large as its input (a 1x1 output of a large map) would gather taps x positions."""
    gathered = int(np.prod(k)) * int(np.prod(x_shape))
    return gathered <= NARROW_GATHER_LIMIT


# Above this many float32 elements `narrow_transpose` is not used (ConvTranspose is).
NARROW_GATHER_LIMIT = 2**22


def narrow_transpose(
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
    """The transpose of a one-group Conv on a narrow output (`narrow`): the columns
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
    _, bwd = tap_index(x_shape[2:], y_shape[2:], k, strides, dilations, pads[: len(k)])
    rows = np.where(bwd < p, bwd * taps + np.arange(taps)[:, None], p * taps)
    dx = g.reduce("ReduceSum", g.node("Gather", [col, g.const(rows, "taps")], axis=0), [0], 0)
    dx = g.node("Transpose", [g.reshape(dx, [-1, n, cin])], perm=[1, 2, 0])  # (N, C, Q)
    return g.reshape(dx, list(x_shape))


def flipped_begins(k: Shape, strides, dilations, pads) -> list[int] | None:
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


def flip(g: FlowBuilder, w: str, nd: int) -> str:
    """The kernel reversed along every spatial axis."""
    ends = np.iinfo(np.int64).min
    return g.node(
        "Slice",
        [w, g.i64([-1] * nd), g.i64([ends] * nd), g.i64(list(range(2, nd + 2))), g.i64([-1] * nd)],
    )
