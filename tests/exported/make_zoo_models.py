"""Hand-build small models in the style of the OLD ONNX model zoo (no framework needed).

    python tests/exported/make_zoo_models.py

Writes, beside this script (random weights, fixed seeds, byte-reproducible):

- zoo_squeezenet_ir3.onnx: IR version 3, opset 8, every initializer also a graph input;
  Fire modules (squeeze 1x1, expand 1x1 + 3x3, Concat), MaxPool, Dropout-7 (`ratio`),
  final conv, GlobalAveragePool, Flatten, Softmax. Input data_0 (1, 3, 32, 32).
- zoo_constant_weights.onnx: IR 4, opset 9; every weight (and every other constant) comes
  from a Constant node, no initializers; LRN, Sum of three branches, Upsample-9 (scales as an
  input, nearest), BatchNormalization-9, Gemm head.
- zoo_shufflenet_like.onnx: IR 4, opset 9; grouped 1x1 convs (group=2), channel shuffle as
  Reshape -> Transpose -> Reshape, depthwise 3x3 convs, a Concat-heavy block, AveragePool, Gemm.
- zoo_constantofshape_weight.onnx: IR 4, opset 9; one Conv weight is ConstantOfShape (a
  constant fill, not stored as a tensor), the other weights are initializers.

Each model passes onnx.checker.check_model and runs in onnxruntime on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
F = TensorProto.FLOAT


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """He-style random weight of `shape` (first dim = outputs)."""
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


class _Graph:
    """Collects nodes and constants; constants become initializers or Constant nodes."""

    def __init__(self, rng: np.random.Generator, *, constant_nodes: bool = False) -> None:
        self.rng = rng
        self.constant_nodes = constant_nodes
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, name: str, values: np.ndarray) -> str:
        tensor = numpy_helper.from_array(values, name)
        if self.constant_nodes:
            self.nodes.append(
                helper.make_node("Constant", [], [name], name=f"{name}_const", value=tensor)
            )
        else:
            self.inits.append(tensor)
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> list[str]:
        base = self.name(op.lower())
        outs = [f"{base}_out{i}" if n_out > 1 else base for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=base, **attrs))
        return outs

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int,
        *,
        stride: int = 1,
        pad: int | None = None,
        group: int = 1,
        bias: bool = True,
        prefix: str = "conv",
    ) -> str:
        pad = k // 2 if pad is None else pad
        w = self.const(f"{prefix}_w_0", _w(self.rng, cout, cin // group, k, k))
        inputs = [x, w]
        if bias:
            b = (self.rng.standard_normal(cout) * 0.1).astype(np.float32)
            inputs.append(self.const(f"{prefix}_b_0", b))
        (y,) = self.node(
            "Conv",
            inputs,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
            group=group,
        )
        return y

    def bn(self, x: str, c: int, prefix: str) -> str:
        r = self.rng
        scale = self.const(f"{prefix}_scale", (1 + 0.2 * r.standard_normal(c)).astype(np.float32))
        shift = self.const(f"{prefix}_shift", (0.1 * r.standard_normal(c)).astype(np.float32))
        mean = self.const(f"{prefix}_mean", (0.1 * r.standard_normal(c)).astype(np.float32))
        var = self.const(f"{prefix}_var", (0.5 + r.random(c)).astype(np.float32))
        (y,) = self.node("BatchNormalization", [x, scale, shift, mean, var], epsilon=1e-5)
        return y

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])[0]


def _finish(
    g: _Graph,
    name: str,
    inp: tuple[str, tuple[int, ...]],
    out: tuple[str, tuple[int, ...]],
    opset: int,
    ir_version: int,
    *,
    inits_as_inputs: bool = False,
) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(inp[0], F, list(inp[1]))]
    if inits_as_inputs:  # IR 3: every initializer is also declared as a graph input
        inputs += [
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.inits
        ]
    graph = helper.make_graph(
        g.nodes,
        name,
        inputs,
        [helper.make_tensor_value_info(out[0], F, list(out[1]))],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="onnxflow-zoo-style",
    )
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def squeezenet_ir3() -> onnx.ModelProto:
    """SqueezeNet 1.1-style: conv, MaxPool, Fire x4, Dropout, conv, GAP, Flatten, Softmax."""
    g = _Graph(np.random.default_rng(1001))
    x = g.conv("data_0", 3, 16, 3, stride=2, pad=0, prefix="conv1")  # 15x15
    x = g.relu(x)
    (x,) = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])  # 7x7

    def fire(x: str, cin: int, squeeze: int, expand: int, tag: str) -> str:
        s = g.relu(g.conv(x, cin, squeeze, 1, prefix=f"{tag}/squeeze1x1"))
        e1 = g.relu(g.conv(s, squeeze, expand, 1, prefix=f"{tag}/expand1x1"))
        e3 = g.relu(g.conv(s, squeeze, expand, 3, prefix=f"{tag}/expand3x3"))
        return g.node("Concat", [e1, e3], axis=1)[0]

    x = fire(x, 16, 4, 8, "fire2")
    x = fire(x, 16, 4, 8, "fire3")
    (x,) = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])  # 3x3
    x = fire(x, 16, 6, 12, "fire4")
    x = fire(x, 24, 6, 12, "fire5")
    # Dropout-7: `ratio` attribute, optional mask output as old zoo files have it.
    x, _mask = g.node("Dropout", [x], n_out=2, ratio=0.5)
    x = g.relu(g.conv(x, 24, 10, 1, pad=0, prefix="conv10"))
    (x,) = g.node("GlobalAveragePool", [x])
    (x,) = g.node("Flatten", [x], axis=1)
    g.nodes.append(helper.make_node("Softmax", [x], ["softmaxout_1"], name="softmax", axis=1))
    return _finish(
        g,
        "squeezenet_ir3",
        ("data_0", (1, 3, 32, 32)),
        ("softmaxout_1", (1, 10)),
        opset=8,
        ir_version=3,
        inits_as_inputs=True,
    )


def constant_weights() -> onnx.ModelProto:
    """Every constant from a Constant node: conv, LRN, Sum of three branches, Upsample, BN, Gemm."""
    g = _Graph(np.random.default_rng(1002), constant_nodes=True)
    x = g.relu(g.conv("data_0", 3, 8, 3, prefix="conv1"))  # 8x16x16
    (x,) = g.node("LRN", [x], size=3, alpha=1e-4, beta=0.75, bias=1.0)
    b1 = g.relu(g.conv(x, 8, 8, 1, prefix="branch1"))
    b2 = g.relu(g.conv(x, 8, 8, 3, prefix="branch2"))
    b3 = g.conv(x, 8, 8, 3, group=8, bias=False, prefix="branch3")  # depthwise
    (x,) = g.node("Sum", [b1, b2, b3])
    (x,) = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])  # 8x8x8
    scales = g.const("up_scales", np.array([1, 1, 2, 2], np.float32))
    (x,) = g.node("Upsample", [x, scales], mode="nearest")  # 8x16x16
    x = g.conv(x, 8, 12, 3, stride=2, bias=False, prefix="conv2")  # 12x8x8
    x = g.relu(g.bn(x, 12, "bn2"))
    (x,) = g.node("GlobalAveragePool", [x])
    (x,) = g.node("Flatten", [x], axis=1)
    w = g.const("fc_w_0", _w(g.rng, 10, 12))
    b = g.const("fc_b_0", (0.1 * g.rng.standard_normal(10)).astype(np.float32))
    g.nodes.append(helper.make_node("Gemm", [x, w, b], ["prob"], name="fc", transB=1))
    return _finish(
        g,
        "constant_weights",
        ("data_0", (1, 3, 16, 16)),
        ("prob", (1, 10)),
        opset=9,
        ir_version=4,
    )


def shufflenet_like() -> onnx.ModelProto:
    """ShuffleNet v1-style units: group-2 1x1 convs, channel shuffle, depthwise 3x3, Concat."""
    g = _Graph(np.random.default_rng(1003))
    x = g.relu(
        g.bn(g.conv("gpu_0/data_0", 3, 8, 3, stride=2, bias=False, prefix="conv1"), 8, "bn1")
    )
    (x,) = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # 8x8x8

    def shuffle(x: str, c: int, hw: int, groups: int = 2) -> str:
        s1 = g.const(g.name("shuffle_shape"), np.array([1, groups, c // groups, hw, hw], np.int64))
        s2 = g.const(g.name("shuffle_shape"), np.array([1, c, hw, hw], np.int64))
        (y,) = g.node("Reshape", [x, s1])
        (y,) = g.node("Transpose", [y], perm=[0, 2, 1, 3, 4])
        return g.node("Reshape", [y, s2])[0]

    def unit(x: str, c: int, hw: int, tag: str) -> str:
        """Stride-1 unit with a residual Add."""
        y = g.relu(
            g.bn(g.conv(x, c, c, 1, group=2, bias=False, prefix=f"{tag}_gconv1"), c, f"{tag}_bn1")
        )
        y = shuffle(y, c, hw)
        y = g.bn(g.conv(y, c, c, 3, group=c, bias=False, prefix=f"{tag}_dw"), c, f"{tag}_bn2")
        y = g.bn(g.conv(y, c, c, 1, group=2, bias=False, prefix=f"{tag}_gconv2"), c, f"{tag}_bn3")
        return g.relu(g.node("Add", [x, y])[0])

    def down_unit(x: str, cin: int, cout: int, hw: int, tag: str) -> str:
        """Stride-2 unit: AveragePool shortcut concatenated with the branch."""
        (short,) = g.node("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
        c = cout - cin
        y = g.relu(
            g.bn(g.conv(x, cin, c, 1, group=2, bias=False, prefix=f"{tag}_gconv1"), c, f"{tag}_bn1")
        )
        y = shuffle(y, c, hw)
        y = g.bn(
            g.conv(y, c, c, 3, stride=2, group=c, bias=False, prefix=f"{tag}_dw"), c, f"{tag}_bn2"
        )
        y = g.bn(g.conv(y, c, c, 1, group=2, bias=False, prefix=f"{tag}_gconv2"), c, f"{tag}_bn3")
        return g.relu(g.node("Concat", [short, y], axis=1)[0])

    x = unit(x, 8, 8, "stage2_1")
    x = down_unit(x, 8, 16, 8, "stage3_1")  # 16x4x4
    x = unit(x, 16, 4, "stage3_2")
    # Concat-heavy block: four branches of different widths, a nested Concat, and a
    # Concat that reuses one tensor twice.
    a = g.relu(g.conv(x, 16, 4, 1, prefix="mix_a"))
    b = g.relu(g.conv(x, 16, 4, 3, group=2, prefix="mix_b"))
    c = g.conv(x, 16, 16, 3, group=16, bias=False, prefix="mix_c")  # depthwise
    (d,) = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4)
    (ab,) = g.node("Concat", [a, b], axis=1)  # 8
    (x,) = g.node("Concat", [ab, c, d, a], axis=1)  # 8 + 16 + 16 + 4 = 44
    x = g.relu(g.conv(x, 44, 32, 1, group=2, prefix="mix_out"))  # 32x4x4
    (x,) = g.node("AveragePool", [x], kernel_shape=[4, 4], strides=[1, 1])  # 32x1x1
    (x,) = g.node("Flatten", [x], axis=1)
    w = g.const("fc_w_0", _w(g.rng, 32, 10))  # (K, N): Gemm without transB
    bias = g.const("fc_b_0", (0.1 * g.rng.standard_normal(10)).astype(np.float32))
    g.nodes.append(helper.make_node("Gemm", [x, w, bias], ["gpu_0/softmax_1"], name="fc"))
    return _finish(
        g,
        "shufflenet_like",
        ("gpu_0/data_0", (1, 3, 32, 32)),
        ("gpu_0/softmax_1", (1, 10)),
        opset=9,
        ir_version=4,
    )


def constantofshape_weight() -> onnx.ModelProto:
    """conv1's weight is ConstantOfShape(shape initializer, value=0.05); the rest are stored."""
    g = _Graph(np.random.default_rng(1004))
    shape = g.const("conv2_w_shape", np.array([8, 8, 3, 3], np.int64))
    g.nodes.append(
        helper.make_node(
            "ConstantOfShape",
            [shape],
            ["conv2_w_fill"],
            name="conv2_w_fill",
            value=numpy_helper.from_array(np.array([0.05], np.float32), "value"),
        )
    )
    x = g.relu(g.conv("input", 3, 8, 3, prefix="conv1"))  # 8x16x16
    b = g.const("conv2_b_0", (0.1 * g.rng.standard_normal(8)).astype(np.float32))
    (x,) = g.node("Conv", [x, "conv2_w_fill", b], kernel_shape=[3, 3], pads=[1] * 4)
    x = g.relu(x)
    x = g.relu(g.conv(x, 8, 16, 3, stride=2, prefix="conv3"))  # 16x8x8
    (x,) = g.node("GlobalAveragePool", [x])
    (x,) = g.node("Flatten", [x], axis=1)
    w = g.const("fc_w_0", _w(g.rng, 10, 16))
    bias = g.const("fc_b_0", (0.1 * g.rng.standard_normal(10)).astype(np.float32))
    g.nodes.append(helper.make_node("Gemm", [x, w, bias], ["output"], name="fc", transB=1))
    return _finish(
        g,
        "constantofshape_weight",
        ("input", (1, 3, 16, 16)),
        ("output", (1, 10)),
        opset=9,
        ir_version=4,
    )


MODELS = {
    "zoo_squeezenet_ir3.onnx": squeezenet_ir3,
    "zoo_constant_weights.onnx": constant_weights,
    "zoo_shufflenet_like.onnx": shufflenet_like,
    "zoo_constantofshape_weight.onnx": constantofshape_weight,
}


def main() -> None:
    import onnxruntime as ort

    for fname, build in MODELS.items():
        model = build()
        path = HERE / fname
        path.write_bytes(model.SerializeToString())
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        feed = np.random.default_rng(0).standard_normal(inp.shape).astype(np.float32)
        (out,) = sess.run(None, {inp.name: feed})
        finite = bool(np.isfinite(out).all())
        print(f"{fname}: {path.stat().st_size} bytes, output {out.shape}, finite {finite}")


if __name__ == "__main__":
    main()
