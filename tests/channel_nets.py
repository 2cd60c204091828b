"""Tiny hand-built ONNX models for the channel-pruning tests (numpy + onnx.helper only).

Each builder returns an opset-17, IR-10 model whose output is `out`; weights are random
with a fixed seed, BatchNormalization statistics non-trivial.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Net:
    """Appends nodes and initializers; names are generated."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, stem: str) -> str:
        self.n += 1
        return f"{stem}{self.n}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def rand(self, stem: str, shape: Sequence[int], scale: float = 0.5) -> str:
        return self.const(stem, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> Any:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.name(op), **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(
        self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True
    ) -> str:
        w = self.rand("w", (cout, cin // group, k, k))
        ins = [x, w] + ([self.rand("b", (cout,))] if bias else [])
        return self.op("Conv", ins, pads=[k // 2] * 4, group=group)

    def bn(self, x: str, c: int) -> str:
        scale = self.rand("bn_scale", (c,))
        shift = self.rand("bn_shift", (c,))
        mean = self.rand("bn_mean", (c,))
        var = self.const("bn_var", (self.rng.random(c) + 0.5).astype(np.float32))
        return self.op("BatchNormalization", [x, scale, shift, mean, var])

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def gemm(self, x: str, fin: int, fout: int, trans_b: bool = False) -> str:
        w = self.rand("fc", (fout, fin) if trans_b else (fin, fout))
        return self.op("Gemm", [x, w, self.rand("fc_b", (fout,))], transB=int(trans_b))

    def head(self, x: str, c: int, classes: int = 5) -> str:
        """GlobalAveragePool -> Flatten -> Gemm."""
        return self.gemm(self.op("Flatten", [self.op("GlobalAveragePool", [x])]), c, classes)

    def build(
        self, out: str, in_shape: Sequence[int | str], out_shape: Sequence[int | str] | None
    ) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [out], ["out"], name="output"))
        graph = helper.make_graph(
            self.nodes,
            "net",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 10
        onnx.checker.check_model(model, full_check=True)
        return model


IMG = ["N", 3, 8, 8]


def conv_chain() -> onnx.ModelProto:
    n = Net()
    x = n.relu(n.conv("x", 3, 8))
    x = n.relu(n.conv(x, 8, 8))
    x = n.relu(n.conv(x, 8, 6))
    return n.build(n.head(x, 6), IMG, ["N", 5])


def conv_bn_relu() -> onnx.ModelProto:
    n = Net(1)
    x = n.relu(n.bn(n.conv("x", 3, 8), 8))
    x = n.relu(n.bn(n.conv(x, 8, 8, bias=False), 8))
    return n.build(n.head(x, 8), IMG, ["N", 5])


def basic_residual() -> onnx.ModelProto:
    """stem -> basic block (identity shortcut) -> head."""
    n = Net(2)
    x = n.relu(n.bn(n.conv("x", 3, 8), 8))
    y = n.relu(n.bn(n.conv(x, 8, 8), 8))
    y = n.bn(n.conv(y, 8, 8), 8)
    z = n.relu(n.op("Add", [y, x]))
    return n.build(n.head(z, 8), IMG, ["N", 5])


def bottleneck_projection() -> onnx.ModelProto:
    """stem -> bottleneck (1x1, 3x3, 1x1) with a projection shortcut -> a second bottleneck
    with an identity shortcut -> head."""
    n = Net(3)
    x = n.relu(n.bn(n.conv("x", 3, 8), 8))
    y = n.relu(n.bn(n.conv(x, 8, 4, k=1), 4))
    y = n.relu(n.bn(n.conv(y, 4, 4), 4))
    y = n.bn(n.conv(y, 4, 12, k=1), 12)
    s = n.bn(n.conv(x, 8, 12, k=1), 12)
    z = n.relu(n.op("Add", [y, s]))
    y = n.relu(n.bn(n.conv(z, 12, 4, k=1), 4))
    y = n.bn(n.conv(y, 4, 12, k=1), 12)
    z = n.relu(n.op("Add", [z, y]))
    return n.build(n.head(z, 12), IMG, ["N", 5])


def depthwise_grouped() -> onnx.ModelProto:
    """MobileNet-like: depthwise (multiplier 1), depthwise multiplier 2, a grouped conv."""
    n = Net(4)
    x = n.relu(n.conv("x", 3, 8))
    x = n.relu(n.bn(n.conv(x, 8, 8, group=8), 8))
    x = n.relu(n.conv(x, 8, 8, k=1))
    x = n.relu(n.conv(x, 8, 16, group=8))
    x = n.relu(n.conv(x, 16, 8, group=2))
    return n.build(n.head(x, 8), IMG, ["N", 5])


def squeeze_excitation() -> onnx.ModelProto:
    n = Net(5)
    x = n.relu(n.conv("x", 3, 8))
    s = n.op("GlobalAveragePool", [x])
    s = n.relu(n.conv(s, 8, 4, k=1))
    s = n.op("Sigmoid", [n.conv(s, 4, 8, k=1)])
    y = n.op("Mul", [x, s])
    y = n.relu(n.conv(y, 8, 6))
    return n.build(n.head(y, 6), IMG, ["N", 5])


def concat_split() -> onnx.ModelProto:
    """Inception-like Concat of two branches, then a Split on channels into two convs."""
    n = Net(6)
    x = n.relu(n.conv("x", 3, 6))
    a = n.relu(n.conv(x, 6, 4, k=1))
    b = n.relu(n.conv(x, 6, 5))
    c = n.op("Concat", [a, x, b], axis=1)  # 4 + 6 + 5 = 15, with a DenseNet-like pass of x
    c = n.relu(n.conv(c, 15, 10, k=1))
    sizes = n.const("split", np.array([4, 6], np.int64))
    p, q = n.op("Split", [c, sizes], n_out=2, axis=1)
    p = n.relu(n.conv(p, 4, 6))
    q = n.relu(n.conv(q, 6, 6))
    y = n.op("Add", [p, q])
    return n.build(n.head(y, 6), IMG, ["N", 5])


def flatten_reshape_gemm() -> onnx.ModelProto:
    """Conv -> Flatten -> Gemm (blocks of 16 features per channel), and a second branch
    Conv -> Reshape with a literal shape constant -> Gemm."""
    n = Net(7)
    x = n.relu(n.conv("x", 3, 4))
    x = n.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])  # 4x4x4
    f = n.relu(n.gemm(n.op("Flatten", [x]), 64, 8))
    y = n.relu(n.conv(x, 4, 5))
    r = n.op("Reshape", [y, n.const("shape", np.array([1, 80], np.int64))])
    g = n.relu(n.gemm(r, 80, 8))
    return n.build(n.gemm(n.op("Add", [f, g]), 8, 5), [1, 3, 8, 8], [1, 5])


def nhwc() -> onnx.ModelProto:
    """A tf2onnx-style NHWC graph: Transpose in, per-channel Mul/Add on the last axis,
    Transpose back."""
    n = Net(8)
    x = n.op("Transpose", ["x"], perm=[0, 3, 1, 2])
    x = n.relu(n.conv(x, 3, 8))
    x = n.op("Transpose", [x], perm=[0, 2, 3, 1])  # N H W C
    x = n.op("Mul", [x, n.rand("scale", (8,))])
    x = n.op("Add", [x, n.rand("shift", (8,))])
    x = n.op("Transpose", [x], perm=[0, 3, 1, 2])
    x = n.relu(n.conv(x, 8, 6))
    return n.build(n.head(x, 6), ["N", 8, 8, 3], ["N", 5])


def mlp() -> onnx.ModelProto:
    """Gemm, Gemm(transB), MatMul + Add bias: hidden units."""
    n = Net(9)
    x = n.relu(n.gemm("x", 12, 16))
    x = n.relu(n.gemm(x, 16, 16, trans_b=True))
    x = n.op("Add", [n.op("MatMul", [x, n.rand("w", (16, 5))]), n.rand("b", (5,))])
    return n.build(x, ["N", 12], ["N", 5])


def feed_forward() -> onnx.ModelProto:
    """A transformer feed-forward block on (N, T, D): hidden units prunable; the residual
    stream (an input) and its LayerNorm are not."""
    n = Net(10)
    h = n.op("MatMul", ["x", n.rand("w1", (8, 24))])
    h = n.op("Relu", [n.op("Add", [h, n.rand("b1", (24,))])])
    h = n.op("Add", [n.op("MatMul", [h, n.rand("w2", (24, 8))]), n.rand("b2", (8,))])
    y = n.op("Add", ["x", h])
    y = n.op("LayerNormalization", [y, n.rand("g", (8,)), n.rand("beta", (8,))], axis=-1)
    return n.build(y, ["N", 4, 8], ["N", 4, 8])


def layernorm_softmax() -> onnx.ModelProto:
    """Hidden units normalized by LayerNorm over them (frozen), conv channels through a
    Softmax over channels (frozen), and a conv whose output is the graph output."""
    n = Net(11)
    x = n.relu(n.conv("x", 3, 6))
    x = n.op("Softmax", [n.conv(x, 6, 6)], axis=1)
    x = n.relu(n.conv(x, 6, 4))  # prunable: read by the head only
    f = n.op("Flatten", [n.op("GlobalAveragePool", [x])])
    h = n.gemm(f, 4, 10)
    h = n.op("LayerNormalization", [h, n.rand("g", (10,)), n.rand("beta", (10,))], axis=-1)
    return n.build(n.gemm(h, 10, 5), IMG, ["N", 5])


def prelu_affine() -> onnx.ModelProto:
    """PRelu slopes and per-channel Mul/Add constants of shape (1, C, 1, 1) and (C, 1, 1)."""
    n = Net(12)
    x = n.conv("x", 3, 8)
    x = n.op("PRelu", [x, n.rand("slope", (8, 1, 1))])
    x = n.op("Mul", [x, n.rand("gamma", (1, 8, 1, 1))])
    x = n.op("Add", [n.rand("beta", (8, 1, 1)), x])
    x = n.relu(n.conv(x, 8, 6))
    return n.build(n.head(x, 6), IMG, ["N", 5])


def channel_shuffle() -> onnx.ModelProto:
    """ShuffleNet's shuffle: Reshape (N, g, C/g, H, W), Transpose, Reshape back."""
    n = Net(14)
    x = n.relu(n.conv("x", 3, 8))
    x = n.op("Reshape", [x, n.const("s1", np.array([1, 2, 4, 8, 8], np.int64))])
    x = n.op("Transpose", [x], perm=[0, 2, 1, 3, 4])
    x = n.op("Reshape", [x, n.const("s2", np.array([1, 8, 8, 8], np.int64))])
    x = n.relu(n.conv(x, 8, 6))
    return n.build(n.head(x, 6), [1, 3, 8, 8], [1, 5])


def conv_transpose() -> onnx.ModelProto:
    """A decoder: ConvTranspose (group 1), grouped (2 groups) and depthwise (multiplier 2)
    ConvTransposes, each with a bias, between convs."""
    n = Net(15)
    x = n.relu(n.conv("x", 3, 8))
    for cin, cout, group in ((8, 6, 1), (6, 8, 2), (8, 16, 8)):
        w = n.rand("wt", (cin, cout // group, 2, 2))
        x = n.relu(
            n.op("ConvTranspose", [x, w, n.rand("bt", (cout,))], strides=[2, 2], group=group)
        )
    x = n.relu(n.conv(x, 16, 6))
    return n.build(n.head(x, 6), IMG, ["N", 5])


def channel_slice() -> onnx.ModelProto:
    """ShuffleNet-like halves cut with Slice (`x[:, :3]`, `x[:, 3:]` with an INT64_MAX
    end), one half through a conv, concatenated back; a `x[:, -4:]` read by a second conv."""
    n = Net(16)
    y = n.relu(n.conv("x", 3, 8))
    zero, axis = n.const("zero", np.array([0], np.int64)), n.const("axis", np.array([1], np.int64))
    three = n.const("three", np.array([3], np.int64))
    a = n.op("Slice", [y, zero, three, axis])
    b = n.op("Slice", [y, three, n.const("end", np.array([2**63 - 1], np.int64)), axis])
    b = n.relu(n.conv(b, 5, 5))
    z = n.relu(n.conv(n.op("Concat", [a, b], axis=1), 8, 6))
    t = n.op(
        "Slice",
        [
            y,
            n.const("neg", np.array([-4], np.int64)),
            n.const("big", np.array([99], np.int64)),
            axis,
        ],
    )
    t = n.relu(n.conv(t, 4, 6))
    return n.build(n.head(n.op("Add", [z, t]), 6), IMG, ["N", 5])


def shuffle_unit() -> onnx.ModelProto:
    """A ShuffleNetV2 unit as torch exports it: `x.chunk(2, dim=1)` as two Slices whose
    bounds are computed from the channel count (Shape, Add, Div, Mul), one half through
    convs, Concat, and the channel shuffle with -1 in the Reshapes' shapes."""
    n = Net(20)
    y = n.relu(n.conv("x", 3, 8))
    i64 = [n.const(f"k{v}", np.array([v], np.int64)) for v in (0, 1, 2)]
    c = n.op("Slice", [n.op("Shape", [y]), i64[1], i64[2]])
    half = n.op("Div", [n.op("Add", [c, i64[1]]), i64[2]])
    mid, end = n.op("Mul", [half, i64[1]]), n.op("Mul", [half, i64[2]])
    a = n.op("Slice", [y, i64[0], mid, i64[1]])
    b = n.op("Slice", [y, mid, end, i64[1]])
    b = n.relu(n.conv(n.relu(n.conv(b, 4, 6, k=1)), 6, 4, k=1))
    z = n.op("Concat", [a, b], axis=1)
    z = n.op("Reshape", [z, n.const("s1", np.array([1, 2, -1, 8, 8], np.int64))])
    z = n.op("Transpose", [z], perm=[0, 2, 1, 3, 4])
    z = n.op("Reshape", [z, n.const("s2", np.array([1, -1, 8, 8], np.int64))])
    z = n.relu(n.conv(z, 8, 6))
    return n.build(n.head(z, 6), [1, 3, 8, 8], [1, 5])


def resize_sizes() -> onnx.ModelProto:
    """Resize with `sizes`: a stored constant [1, 8, 16, 16], and sizes computed from the
    input's Shape (Concat of its first two dimensions and a constant)."""
    n = Net(17)
    y = n.relu(n.conv("x", 3, 8))
    empty = ""
    y = n.op("Resize", [y, empty, empty, n.const("sizes", np.array([1, 8, 16, 16], np.int64))])
    y = n.relu(n.conv(y, 8, 6))
    nc = n.op("Slice", [n.op("Shape", [y]), n.const("s0", np.array([0], np.int64)),
                        n.const("s2", np.array([2], np.int64))])  # fmt: skip
    hw = n.const("hw", np.array([8, 8], np.int64))
    y = n.op("Resize", [y, empty, empty, n.op("Concat", [nc, hw], axis=0)], mode="linear")
    y = n.relu(n.conv(y, 6, 6))
    return n.build(n.head(y, 6), [1, 3, 8, 8], [1, 5])


def output_conv() -> onnx.ModelProto:
    """One conv whose output is the graph output: nothing can be removed."""
    n = Net(13)
    return n.build(n.conv("x", 3, 4), IMG, ["N", 4, 8, 8])


ALL = {
    f.__name__: f
    for f in (
        conv_chain, conv_bn_relu, basic_residual, bottleneck_projection, depthwise_grouped,
        squeeze_excitation, concat_split, flatten_reshape_gemm, nhwc, mlp, feed_forward,
        layernorm_softmax, prelu_affine, conv_transpose, channel_slice, resize_sizes,
        shuffle_unit, channel_shuffle,
    )
}  # fmt: skip
