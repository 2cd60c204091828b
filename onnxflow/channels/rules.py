"""Per-op channel rules: how channel slots cross each op (registered with `@channel_rule`).

Each rule gets the tracer, the node and the traces of its inputs (None: not channel-traced,
e.g. a graph input or a shape), and returns the traces of its outputs. See
docs/channels.md for the table of ops and what each does to a group.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxflow.channels.groups import IN, OUT, PARAM, Edit, Trace, Tracer, channel_rule, no_rule

UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Clip", "Identity", "Cast",
    "Dropout", "ThresholdedRelu", "Shrink", "Swish",
)  # fmt: skip
POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool")


def _const(t: gs.Tensor | None) -> np.ndarray | None:
    return np.asarray(t.values) if isinstance(t, gs.Constant) else None


@channel_rule(*UNARY)
def unary(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    """Elementwise on one data input: slot c in, slot c out."""
    return [ins[0] if i == 0 else None for i in range(len(node.outputs))]


@channel_rule(*POOLS)
def pool(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    """Pooling acts per channel (axis 1); on any other axis it would mix the traced one."""
    x = ins[0]
    if x is not None and x.axis != 1:
        return no_rule(tr, node, ins)
    return [x if i == 0 else None for i in range(len(node.outputs))]


@channel_rule("Resize", "Upsample")
def resize(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    """Per channel when the channel axis keeps its size: a scale of 1 there, or `sizes`
    with the channel count there (rewritten in the compact model when the model stores
    them; sizes computed from the input's Shape adapt by themselves)."""
    x = ins[0]
    if x is None:
        return [None]
    first = 2 if node.op == "Resize" else 1
    scales = _const(node.inputs[first]) if len(node.inputs) > first else None
    sizes = _const(node.inputs[3]) if node.op == "Resize" and len(node.inputs) > 3 else None
    if sizes is not None and sizes.size:
        if sizes.size > x.axis and int(sizes.reshape(-1)[x.axis]) == len(x.slots):
            tr.edits.append(Edit("shape", node.outputs[0].name, (x.slots,), x.axis, 3))
            return [x]
    elif scales is not None and scales.size and float(scales.reshape(-1)[x.axis]) == 1.0:
        return [x]
    tr.freeze(x, f"{node.op} with a scale on the channel axis")
    return [None]


@channel_rule("Pad")
def pad(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    x = ins[0]
    if x is None:
        return [None]
    pads = _const(node.inputs[1]) if len(node.inputs) > 1 else np.asarray(node.attrs.get("pads"))
    axes = _const(node.inputs[3]) if len(node.inputs) > 3 else None
    r = _rank(node.inputs[0])
    if pads is not None and pads.size:
        ax = [int(a) % r for a in axes] if axes is not None else list(range(r))
        n = len(ax)
        if x.axis not in ax or (pads[ax.index(x.axis)] == 0 and pads[ax.index(x.axis) + n] == 0):
            return [x]
    tr.freeze(x, "Pad on the channel axis")
    return [None]


@channel_rule("Slice")
def slice_(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    """On another axis: passes. On the channel axis with step 1: the output's slots are the
    cut range (`x[:, a:b]`); stored bounds become the kept counts before and inside the
    range; computed ones must cut C into equal parts (`torch.chunk`, ShuffleNet's halves)."""
    x = ins[0]
    if x is None:
        return [None]
    r = _rank(node.inputs[0])
    c = len(x.slots)
    if tr.opset >= 10:
        bounds = [_const(v) if len(node.inputs) > i and v.name else None for i, v in
                  enumerate(node.inputs[:5]) if i > 0]  # fmt: skip
        bounds += [None] * (4 - len(bounds))
        starts, ends, axes, steps = bounds
        if len(node.inputs) <= 3 or not node.inputs[3].name:
            axes = np.arange(len(starts)) if starts is not None else None
    else:
        starts, ends = np.asarray(node.attrs.get("starts")), np.asarray(node.attrs.get("ends"))
        given = node.attrs.get("axes")
        axes, steps = np.arange(len(starts)) if given is None else np.asarray(given), None
    ax = None if axes is None else [int(a) % r for a in axes.reshape(-1)]
    if ax is not None and x.axis not in ax:
        return [x]
    if starts is None or ends is None or ax is None:
        tr.freeze(x, "Slice with computed bounds")
        return [None]
    i = ax.index(x.axis)
    step = 1 if steps is None else int(steps.reshape(-1)[i])
    lo, hi, _ = slice(int(starts.reshape(-1)[i]), int(ends.reshape(-1)[i]), step).indices(c)
    if (lo, hi) == (0, c) and step == 1:
        return [x]
    stored = tr.opset < 10 or all(node.inputs[k].name in tr.stored for k in (1, 2))
    n = c // (hi - lo) if hi > lo else 0
    if step == 1 and not stored and n > 1 and c % (hi - lo) == 0 and lo % (hi - lo) == 0:
        # Computed bounds cutting C into n equal parts: torch.chunk / split, which compute
        # them from the channel count at run time. Index i of every part is one group, so
        # the parts stay equal and the computed bounds stay right (the compact model's
        # equivalence check catches bounds computed from anything else).
        parts = x.slots.reshape(n, c // n)
        for k in range(1, n):
            tr.union(parts[0], parts[k])
        return [Trace(x.axis, parts[lo * n // c])]
    if step != 1 or hi <= lo or not stored:
        why = "a step" if step != 1 else "computed bounds" if hi > lo else "an empty range"
        tr.freeze(x, f"Slice on the channel axis with {why}")
        return [None]
    tr.edits.append(Edit("slice", node.outputs[0].name, (x.slots[:lo], x.slots[lo:hi]), i))
    return [Trace(x.axis, x.slots[lo:hi])]


def _rank(t: gs.Tensor) -> int:
    return len(t.shape) if t.shape is not None else 0


@channel_rule("Transpose")
def transpose(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    """The channel axis moves (NHWC exports transpose to NCHW and back)."""
    x = ins[0]
    if x is None:
        return [None]
    r = _rank(node.inputs[0])
    perm = [int(p) for p in (node.attrs.get("perm") or list(range(r))[::-1])]
    return [Trace(perm.index(x.axis), x.slots)]


@channel_rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    """Follow channel c to the output positions its values land at. Traceable when one
    output axis alone tells the channel of every element (flatten C,H,W into features:
    channel c owns a block; merging (m, g) back into C·… after a shuffle's Transpose), or
    when the channel axis is split in two (C -> g, m: the g parts' index i coupled)."""
    x = ins[0]
    if x is None:
        return [None]
    src, dst = node.inputs[0].shape, node.outputs[0].shape
    if src is None or dst is None:
        return no_rule(tr, node, ins)
    src_dims = tuple(int(d) for d in src)
    dst_dims = tuple(int(d) for d in dst)
    c = len(x.slots)
    shape = [1] * len(src_dims)
    shape[x.axis] = c
    ch = np.broadcast_to(np.arange(c).reshape(shape), src_dims).reshape(dst_dims)
    computed = getattr(tr.stored, "computed_shapes", {}).get(node.outputs[0].name, {})

    def fixed(b: int) -> bool:
        """Whether the target shape's entry b is computed and does not follow the cut
        (it follows only where it is the input's own channel count)."""
        if -1 in computed:
            return True
        return b in computed and computed[b] != x.axis

    for b in range(len(dst_dims)):
        first = ch[tuple(slice(None) if i == b else slice(0, 1) for i in range(len(dst_dims)))]
        if dst_dims[b] > 1 and np.array_equal(np.broadcast_to(first, dst_dims), ch):
            v = first.reshape(-1)
            if node.op == "Reshape":
                if fixed(b):
                    tr.freeze(x, "Reshape to a channel count computed from other tensors")
                    return [None]
                tr.edits.append(Edit("reshape", node.outputs[0].name, (x.slots[v],), b))
            return [Trace(b, x.slots[v])]
    if c == 1:
        return [None]
    a = x.axis
    if (
        len(dst_dims) == len(src_dims) + 1
        and dst_dims[:a] == src_dims[:a]
        and dst_dims[a + 2 :] == src_dims[a + 1 :]
        and dst_dims[a] * dst_dims[a + 1] == c
        and min(dst_dims[a], dst_dims[a + 1]) > 1
    ):
        # (C) -> (g, m), e.g. a channel shuffle's first Reshape: channel k·m + i is index
        # i of part k. Removing index i from every part keeps the parts equal, so the
        # parts' index i is one group, traced on the m axis.
        cols = x.slots.reshape(dst_dims[a], dst_dims[a + 1])
        for k in range(1, len(cols)):
            tr.union(cols[0], cols[k])
        if node.op == "Reshape":
            if -1 in computed or a in computed or a + 1 in computed:
                tr.freeze(x, "Reshape to a channel count computed from other tensors")
                return [None]
            tr.edits.append(Edit("reshape", node.outputs[0].name, (cols[0],), a + 1))
        return [Trace(a + 1, cols[0])]
    tr.freeze(x, f"{node.op} whose channel mapping cannot be followed")
    return [None]


@channel_rule("Concat")
def concat(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    """Along the channel axis: the output's slots are the inputs' in order (offsets); along
    another axis, the inputs' channels meet elementwise (coupled)."""
    r = _rank(node.outputs[0])
    axis = int(node.attrs.get("axis", 0)) % max(r, 1)
    traced = [t for t in ins if t is not None]
    if not traced:
        return [None]
    if all(t is not None and t.axis == axis for t in ins):
        return [Trace(axis, np.concatenate([t.slots for t in ins if t is not None]))]
    if all(t.axis == axis for t in traced):  # an untraced piece: its channels are new, fixed
        parts = []
        for t, v in zip(ins, node.inputs, strict=True):
            if t is None:
                extra = tr.new(int(v.shape[axis]), node.outputs[0].name)
                tr.freeze(Trace(axis, extra), "concatenated with an untraced tensor")
                parts.append(extra)
            else:
                parts.append(t.slots)
        return [Trace(axis, np.concatenate(parts))]
    first = traced[0]
    if len(traced) == len(ins) and all(
        t.axis == first.axis and len(t.slots) == len(first.slots) for t in traced
    ):
        for t in traced[1:]:
            tr.union(first.slots, t.slots)
        return [first]
    return no_rule(tr, node, ins)


@channel_rule("Split")
def split(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    x = ins[0]
    if x is None:
        return [None] * len(node.outputs)
    r = _rank(node.inputs[0])
    axis = int(node.attrs.get("axis", 0)) % max(r, 1)
    if axis != x.axis:
        return [x] * len(node.outputs)
    sizes = [int(o.shape[axis]) for o in node.outputs]
    offsets = np.cumsum([0, *sizes])
    parts = tuple(x.slots[offsets[i] : offsets[i + 1]] for i in range(len(sizes)))
    tr.edits.append(Edit("split", node.outputs[0].name, parts, axis))
    return [Trace(axis, p) for p in parts]


ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "PRelu", "Pow")


@channel_rule(*ELEMENTWISE)
def elementwise(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    """Broadcasting elementwise ops. Two channel tensors couple slot c of each (residual
    streams, squeeze-excitation gates); a constant with the channel count along the channel
    axis is a per-channel constant that rides with the group (bias, PRelu slope)."""
    out = node.outputs[0]
    r = _rank(out)
    pos: int | None = None
    traced: list[Trace] = []
    for t, v in zip(ins, node.inputs, strict=True):
        if t is not None:
            p = t.axis + r - _rank(v)
            if pos is not None and p != pos:
                return no_rule(tr, node, ins)
            pos = p
            traced.append(t)
    if pos is None:
        return [None]
    c = max(len(t.slots) for t in traced)
    if any(len(t.slots) not in (1, c) for t in traced):
        return no_rule(tr, node, ins)
    full = [t for t in traced if len(t.slots) == c]
    for t in full[1:]:
        tr.union(full[0].slots, t.slots)
    result = Trace(pos, full[0].slots)
    for t, v in zip(ins, node.inputs, strict=True):
        if t is not None or v is None or v.shape is None:
            continue
        q = pos - (r - _rank(v))
        dim = int(v.shape[q]) if 0 <= q < _rank(v) else 1
        if dim == 1:
            continue
        if dim != c:
            return no_rule(tr, node, ins)
        if isinstance(v, gs.Constant):
            tr.claim(v, q, result.slots, PARAM)
        else:
            tr.freeze(result, f"{node.op} with an untraced channel tensor")
            return [None]
    return [result]


@channel_rule("BatchNormalization", "InstanceNormalization")
def norm_per_channel(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    """Normalization per channel: its parameters are per-channel constants of the group."""
    x = ins[0]
    if x is None:
        return [None] * len(node.outputs)
    if x.axis != 1:
        return no_rule(tr, node, ins)
    for v in node.inputs[1:]:
        if isinstance(v, gs.Constant) or (v is not None and v.name):
            tr.claim(v, 0, x.slots, PARAM)
    return [x if i == 0 else None for i in range(len(node.outputs))]


def _mixing(tr: Tracer, node: gs.Node, x: Trace, axes: list[int], what: str) -> list[Trace | None]:
    if x.axis in axes:
        tr.freeze(x, f"{what} over the channel axis")
    return [x] + [None] * (len(node.outputs) - 1)


@channel_rule("LayerNormalization")
def layer_norm(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    x = ins[0]
    if x is None:
        return [None] * len(node.outputs)
    r = _rank(node.inputs[0])
    a = int(node.attrs.get("axis", -1)) % r
    return _mixing(tr, node, x, list(range(a, r)), "LayerNormalization")


@channel_rule("GroupNormalization", "LRN", "MeanVarianceNormalization")
def group_norm(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    x = ins[0]
    if x is None:
        return [None]
    return _mixing(tr, node, x, [x.axis], node.op)


@channel_rule("Softmax", "LogSoftmax", "Hardmax")
def softmax(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    x = ins[0]
    if x is None:
        return [None]
    r = _rank(node.inputs[0])
    a = int(node.attrs.get("axis", -1 if tr.opset >= 13 else 1)) % r
    axes = [a] if tr.opset >= 13 else list(range(a, r))
    return _mixing(tr, node, x, axes, node.op)


REDUCE = (
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceProd",
    "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp",
)  # fmt: skip


@channel_rule(*REDUCE)
def reduce(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    x = ins[0]
    if x is None:
        return [None]
    r = _rank(node.inputs[0])
    given = node.attrs.get("axes")
    if given is None and len(node.inputs) > 1:
        given = _const(node.inputs[1])
    axes = [int(a) % r for a in given] if given is not None and len(given) else list(range(r))
    if x.axis in axes:
        tr.freeze(x, f"{node.op} over the channel axis")
        return [None]
    keep = int(node.attrs.get("keepdims", 1))
    return [Trace(x.axis - (0 if keep else sum(a < x.axis for a in axes)), x.slots)]


def _weight(tr: Tracer, t: gs.Tensor | None) -> bool:
    """Whether `t` is (a view of) one of the prunable weights."""
    from onnxflow.channels.groups import stored_axis

    found = stored_axis(t, 0, tr.stored)
    return found is not None and found[0].name in tr.weights


@channel_rule("Conv")
def conv(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    """Out-slice W[c] (and bias) produces channel c; in-slice W[:, c] reads it. Grouped
    convolutions remove the same index from every group (slot j of each group coupled);
    depthwise convolutions pass the channel on (group becomes the kept count)."""
    x, w = ins[0], node.inputs[1]
    if not _weight(tr, w) or w.shape is None:
        tr.freeze(x, "Conv whose weight is computed or excluded")
        return [None]
    c_out, per_group = int(w.shape[0]), int(w.shape[1])
    groups = int(node.attrs.get("group", 1))
    c_in = per_group * groups
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    name = node.outputs[0].name
    if x is not None and (x.axis != 1 or len(x.slots) != c_in):
        tr.freeze(x, "Conv input not on the channel axis")
        x = None
    if groups > 1 and groups == c_in and per_group == 1:  # depthwise (multiplier m)
        if x is None:
            return [None]
        out = np.repeat(x.slots, c_out // groups)
        tr.claim(w, 0, out, OUT)
        if bias is not None:
            tr.claim(bias, 0, out, PARAM)
        tr.edits.append(Edit("group", name, (x.slots,)))
        return [Trace(1, out)]
    out = tr.new(c_out, name)
    og = c_out // groups
    for k in range(1, groups):
        tr.union(out[:og], out[k * og : (k + 1) * og])
    if x is not None:
        for k in range(1, groups):
            tr.union(x.slots[:per_group], x.slots[k * per_group : (k + 1) * per_group])
        tr.claim(w, 1, x.slots[:per_group], IN)
    tr.claim(w, 0, out, OUT)
    if bias is not None:
        tr.claim(bias, 0, out, PARAM)
    return [Trace(1, out)]


@channel_rule("ConvTranspose")
def conv_transpose(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    """W is (C_in, C_out / group, k...): in-slice W[c], out-slice W[:, j]. Grouped: output j
    of every group is one group, and so is input j of every group (the groups stay equal);
    depthwise (group = C_in, multiplier m): input c becomes outputs c·m … c·m+m-1."""
    x, w = ins[0], node.inputs[1]
    if not _weight(tr, w) or w.shape is None or node.attrs.get("output_shape") is not None:
        return no_rule(tr, node, ins)
    c_in, per_group = int(w.shape[0]), int(w.shape[1])
    groups = int(node.attrs.get("group", 1))
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if x is not None and (x.axis != 1 or len(x.slots) != c_in):
        tr.freeze(x, "ConvTranspose input not on the channel axis")
        x = None
    if groups > 1 and groups == c_in:  # depthwise: the channel passes
        if x is None:
            return [None]
        out = np.repeat(x.slots, per_group)
        tr.claim(w, 0, x.slots, OUT)
        if bias is not None:
            tr.claim(bias, 0, out, PARAM)
        tr.edits.append(Edit("group", node.outputs[0].name, (x.slots,)))
        return [Trace(1, out)]
    out = tr.new(per_group * groups, node.outputs[0].name)
    for k in range(1, groups):
        tr.union(out[:per_group], out[k * per_group : (k + 1) * per_group])
    if x is not None:
        pi = c_in // groups
        for k in range(1, groups):
            tr.union(x.slots[:pi], x.slots[k * pi : (k + 1) * pi])
        tr.claim(w, 0, x.slots, IN)
    tr.claim(w, 1, out[:per_group], OUT)
    if bias is not None:
        tr.claim(bias, 0, out, PARAM)
    return [Trace(1, out)]


def _dense(
    tr: Tracer, node: gs.Node, x: Trace | None, w: gs.Tensor, in_ax: int, out_ax: int, r: int
) -> Trace:
    """A matrix product x @ W: in-slice row c of W, out-slice column j."""
    assert w.shape is not None
    out = tr.new(int(w.shape[out_ax]), node.outputs[0].name)
    if x is not None:
        if x.axis != _rank(node.inputs[0]) - 1 or len(x.slots) != int(w.shape[in_ax]):
            tr.freeze(x, f"{node.op} input not on the feature axis")
        else:
            tr.claim(w, in_ax, x.slots, IN)
    tr.claim(w, out_ax, out, OUT)
    return Trace(r - 1, out)


@channel_rule("Gemm")
def gemm(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    w = node.inputs[1]
    if not _weight(tr, w) or int(node.attrs.get("transA", 0)) or ins[1] is not None:
        return no_rule(tr, node, ins)
    t_b = int(node.attrs.get("transB", 0))
    out = _dense(tr, node, ins[0], w, 1 if t_b else 0, 0 if t_b else 1, 2)
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = node.inputs[2]
        dims = [int(d) for d in (c.shape or [])]
        if isinstance(c, gs.Constant) and dims and dims[-1] == len(out.slots) > 1:
            if len(dims) == 2 and dims[0] != 1:
                return no_rule(tr, node, ins)
            tr.claim(c, len(dims) - 1, out.slots, PARAM)
        elif not isinstance(c, gs.Constant) or (dims and dims[-1] != 1):
            tr.freeze(out, "Gemm with a computed C")
            return [None]
    return [out]


@channel_rule("MatMul")
def matmul(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    w = node.inputs[1]
    if not _weight(tr, w) or ins[1] is not None or _rank(w) != 2:
        return no_rule(tr, node, ins)
    return [_dense(tr, node, ins[0], w, 0, 1, _rank(node.outputs[0]))]


@channel_rule("Shape", "Size")
def shape_of(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    """A shape read at run time would change with the channel count."""
    return no_rule(tr, node, ins)
