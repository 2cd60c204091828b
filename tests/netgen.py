"""Random-weight ONNX models for tests, built with numpy and ``onnx.helper`` only.

The models mimic what ``torch.onnx.export`` writes for common CIFAR/ImageNet networks
(initializer names like ``layer1.0.bn1.running_mean``, node names like
``/layer1/0/conv1/Conv``), but need no torch. BatchNormalization layers get
non-trivial statistics on purpose: a flow engine that takes ``abs()`` of shifts, or
keeps real activations, behaves visibly differently on them.

Every builder returns an opset-17, IR-version-10 model (onnxruntime 1.31 refuses the
IR 14 that onnx 1.23 writes by default) with one float input ``"input"`` and one
output ``"output"``. Builds are deterministic for a given ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 10

Batch = int | str

# Channel counts, "M" = 2x2 max-pool (the CIFAR VGG configurations).
_VGG_CFGS: dict[str, list[str]] = {
    name: cfg.split()
    for name, cfg in {
        "vgg11": "64 M 128 M 256 256 M 512 512 M 512 512 M",
        "vgg13": "64 64 M 128 128 M 256 256 M 512 512 M 512 512 M",
        "vgg16": "64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M",
        "vgg19": "64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 512 512 512 M",
    }.items()
}

# depth -> (bottleneck?, blocks per stage)
_RESNET_CFGS: dict[int, tuple[bool, tuple[int, int, int, int]]] = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}


class _Builder:
    """Accumulates nodes and initializers of one graph, PyTorch-exporter style.

    ``path`` arguments are torch module paths (``"layer1.0.conv1"``): they name the
    parameters (``layer1.0.conv1.weight``) and the node (``/layer1/0/conv1/Conv``).
    Every method takes the name of its input tensor and returns the name of its output.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.params: dict[str, np.ndarray] = {}
        self._node_names: set[str] = set()

    # -- primitives -------------------------------------------------------------

    def param(self, name: str, value: np.ndarray) -> str:
        if name in self.params:
            raise ValueError(f"duplicate initializer {name!r}")
        self.params[name] = value
        return name

    def op(self, op_type: str, inputs: Sequence[str], path: str, **attrs: Any) -> str:
        """Appends one node named ``/<path>/<op_type>`` (made unique) with one output."""
        scope = "/" + path.replace(".", "/") if path else ""
        name = base = f"{scope}/{op_type}"
        k = 0
        while name in self._node_names:
            k += 1
            name = f"{base}_{k}"
        self._node_names.add(name)
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    def he_normal(self, shape: Sequence[int], fan_in: int) -> np.ndarray:
        w = self.rng.standard_normal(tuple(shape), dtype=np.float32)
        w *= np.float32(math.sqrt(2.0 / fan_in))
        return w

    def bias(self, n: int) -> np.ndarray:
        """N(0, 0.1), as ``tests/torch_reference.py`` randomizes biases."""
        return self.rng.normal(0.0, 0.1, n).astype(np.float32)

    # -- layers -----------------------------------------------------------------

    def conv(
        self,
        x: str,
        path: str,
        cin: int,
        cout: int,
        k: int,
        *,
        stride: int = 1,
        pad: int | None = None,
        group: int = 1,
        bias: bool = False,
    ) -> str:
        pad = k // 2 if pad is None else pad
        fan_in = cin // group * k * k
        inputs = [self.param(f"{path}.weight", self.he_normal((cout, cin // group, k, k), fan_in))]
        if bias:
            inputs.append(self.param(f"{path}.bias", self.bias(cout)))
        return self.op(
            "Conv",
            [x, *inputs],
            path,
            dilations=[1, 1],
            group=group,
            kernel_shape=[k, k],
            pads=[pad] * 4,
            strides=[stride, stride],
        )

    def bn(self, x: str, path: str, c: int) -> str:
        rng = self.rng
        stats = {
            "weight": rng.normal(1.0, 0.3, c),
            "bias": rng.normal(0.0, 0.3, c),
            "running_mean": rng.normal(0.0, 0.5, c),
            "running_var": rng.uniform(0.5, 2.0, c),
        }
        names = [self.param(f"{path}.{k}", v.astype(np.float32)) for k, v in stats.items()]
        return self.op("BatchNormalization", [x, *names], path, epsilon=1e-5, momentum=0.9)

    def gemm(self, x: str, path: str, fin: int, fout: int) -> str:
        w = self.param(f"{path}.weight", self.he_normal((fout, fin), fin))
        b = self.param(f"{path}.bias", self.bias(fout))
        return self.op("Gemm", [x, w, b], path, alpha=1.0, beta=1.0, transB=1)

    def matmul_add(self, x: str, path: str, fin: int, fout: int) -> str:
        """Dense layer as TensorFlow exports it: MatMul with an (in, out) weight, then Add."""
        w = self.param(f"{path}.weight", self.he_normal((fin, fout), fin))
        b = self.param(f"{path}.bias", self.bias(fout))
        return self.op("Add", [self.op("MatMul", [x, w], path), b], path)

    def relu(self, x: str, path: str) -> str:
        return self.op("Relu", [x], path)

    def maxpool(self, x: str, path: str, k: int, stride: int, pad: int = 0) -> str:
        return self.op(
            "MaxPool", [x], path, kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2
        )

    # -- output -----------------------------------------------------------------

    def build(
        self, y: str, input_shape: Sequence[Batch], output_shape: Sequence[Batch], graph_name: str
    ) -> onnx.ModelProto:
        """Renames tensor ``y`` to ``"output"`` and wraps everything in a model."""
        for node in self.nodes:
            for io in (node.input, node.output):
                for i, name in enumerate(io):
                    if name == y:
                        io[i] = "output"
        model = onnx.ModelProto(
            ir_version=IR_VERSION,
            producer_name="onnxflow-netgen",
            opset_import=[helper.make_opsetid("", OPSET)],
        )
        # The graph is filled in place: GraphProto(...) + CopyFrom or numpy_helper.from_array
        # would copy every weight again (a second or more for ResNet-152).
        graph = model.graph
        graph.name = graph_name
        for io, name, shape in (
            (graph.input, "input", input_shape),
            (graph.output, "output", output_shape),
        ):
            io.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        graph.node.extend(self.nodes)
        for name, value in self.params.items():
            t = graph.initializer.add()
            t.name = name
            t.data_type = helper.np_dtype_to_tensor_dtype(value.dtype)
            t.dims.extend(value.shape)
            t.raw_data = value.tobytes()
        return model


def _check_batch(batch: Batch) -> None:
    if (isinstance(batch, int) and batch < 1) or (isinstance(batch, str) and not batch):
        raise ValueError(f"batch must be a positive int or a non-empty name, got {batch!r}")


def mlp(
    depth: int,
    width: int,
    in_features: int,
    out_features: int,
    *,
    seed: int = 0,
    softmax: bool = False,
    use_matmul: bool = False,
    batch: Batch = 1,
) -> onnx.ModelProto:
    """A chain of ``depth`` dense layers (Relu between them), torch ``nn.Sequential`` naming.

    Layer ``i`` is ``layers.{2i}``; hidden layers are ``width`` wide. ``use_matmul`` writes
    each layer as MatMul + Add like TensorFlow exporters; ``softmax`` appends a Softmax.
    """
    if depth < 1:
        raise ValueError("depth must be >= 1")
    _check_batch(batch)
    b = _Builder(seed)
    dense = b.matmul_add if use_matmul else b.gemm
    x = "input"
    for i in range(depth):
        fin = in_features if i == 0 else width
        fout = out_features if i == depth - 1 else width
        x = dense(x, f"layers.{2 * i}", fin, fout)
        if i < depth - 1:
            x = b.relu(x, f"layers.{2 * i + 1}")
    if softmax:
        x = b.op("Softmax", [x], f"layers.{2 * depth - 1}", axis=-1)
    return b.build(x, [batch, in_features], [batch, out_features], f"mlp{depth}")


def vgg(
    cfg: str = "vgg16",
    *,
    batch_norm: bool = True,
    num_classes: int = 100,
    input_hw: int = 32,
    width_div: int = 1,
    seed: int = 0,
    batch: Batch = 1,
) -> onnx.ModelProto:
    """CIFAR VGG: 3x3 convs (+BN) + Relu, 2x2 max-pools, Flatten, one Gemm ``classifier``.

    ``features.{i}`` indices follow torch's ``make_layers``; ``width_div`` divides every
    channel count to make small test models of the same shape.
    """
    if cfg not in _VGG_CFGS:
        raise ValueError(f"unknown cfg {cfg!r}, expected one of {sorted(_VGG_CFGS)}")
    _check_batch(batch)
    b = _Builder(seed)
    x, c, hw, i = "input", 3, input_hw, 0
    for v in _VGG_CFGS[cfg]:
        if v == "M":
            x = b.maxpool(x, f"features.{i}", 2, 2)
            hw //= 2
            i += 1
            continue
        cout = max(1, int(v) // width_div)
        x = b.conv(x, f"features.{i}", c, cout, 3, pad=1, bias=True)
        if batch_norm:
            x = b.bn(x, f"features.{i + 1}", cout)
        x = b.relu(x, f"features.{i + 2 if batch_norm else i + 1}")
        c, i = cout, i + (3 if batch_norm else 2)
    if hw < 1:
        raise ValueError(f"input_hw={input_hw} is too small for {cfg}")
    x = b.op("Flatten", [x], "", axis=1)
    x = b.gemm(x, "classifier", c * hw * hw, num_classes)
    return b.build(x, [batch, 3, input_hw, input_hw], [batch, num_classes], cfg)


def _conv_bn(
    b: _Builder, x: str, path: str, i: int, cin: int, cout: int, k: int, stride: int = 1
) -> str:
    """``{path}.conv{i}`` followed by ``{path}.bn{i}``, as in torchvision's blocks."""
    return b.bn(b.conv(x, f"{path}.conv{i}", cin, cout, k, stride=stride), f"{path}.bn{i}", cout)


def _basic_block(
    b: _Builder, x: str, path: str, cin: int, planes: int, stride: int
) -> tuple[str, int]:
    y = b.relu(_conv_bn(b, x, path, 1, cin, planes, 3, stride), f"{path}.relu")
    y = _conv_bn(b, y, path, 2, planes, planes, 3)
    return _residual(b, x, y, path, cin, planes, stride), planes


def _bottleneck(
    b: _Builder, x: str, path: str, cin: int, planes: int, stride: int
) -> tuple[str, int]:
    cout = planes * 4
    y = b.relu(_conv_bn(b, x, path, 1, cin, planes, 1), f"{path}.relu")
    y = b.relu(_conv_bn(b, y, path, 2, planes, planes, 3, stride), f"{path}.relu")
    y = _conv_bn(b, y, path, 3, planes, cout, 1)
    return _residual(b, x, y, path, cin, cout, stride), cout


def _residual(b: _Builder, x: str, y: str, path: str, cin: int, cout: int, stride: int) -> str:
    """``relu(y + shortcut(x))`` with a 1x1 conv + BN projection when the shape changes."""
    if stride != 1 or cin != cout:
        x = b.conv(x, f"{path}.downsample.0", cin, cout, 1, stride=stride)
        x = b.bn(x, f"{path}.downsample.1", cout)
    return b.relu(b.op("Add", [y, x], path), f"{path}.relu")


def resnet(
    depth: int,
    *,
    input_hw: int = 224,
    num_classes: int = 1000,
    seed: int = 0,
    width: int = 64,
    batch: Batch = 1,
) -> onnx.ModelProto:
    """torchvision-style ImageNet ResNet-18/34 (basic) or 50/101/152 (bottleneck, stride in conv2).

    ``width`` is the stem/first-stage width (64 in torchvision); stages use 1, 2, 4, 8 times it.
    """
    if depth not in _RESNET_CFGS:
        raise ValueError(f"unsupported depth {depth}, expected one of {sorted(_RESNET_CFGS)}")
    _check_batch(batch)
    bottleneck, blocks = _RESNET_CFGS[depth]
    block = _bottleneck if bottleneck else _basic_block
    b = _Builder(seed)
    x = b.relu(b.bn(b.conv("input", "conv1", 3, width, 7, stride=2, pad=3), "bn1", width), "relu")
    x = b.maxpool(x, "maxpool", 3, 2, pad=1)
    c = width
    for stage, n in enumerate(blocks):
        planes = width * 2**stage
        for j in range(n):
            stride = 2 if stage > 0 and j == 0 else 1
            x, c = block(b, x, f"layer{stage + 1}.{j}", c, planes, stride)
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x], "avgpool")], "", axis=1)
    x = b.gemm(x, "fc", c, num_classes)
    return b.build(x, [batch, 3, input_hw, input_hw], [batch, num_classes], f"resnet{depth}")


def cifar_resnet(
    depth: int = 20,
    *,
    num_classes: int = 10,
    seed: int = 0,
    pool: str = "gap",
    batch: Batch = 1,
) -> onnx.ModelProto:
    """CIFAR ResNet-(6n+2): 3x3 stem, three stages of n basic blocks (16/32/64 channels).

    Shortcuts are 1x1 conv + BN projections ("option B"). ``pool`` picks how the head
    pools: ``"gap"`` (GlobalAveragePool + Flatten) or ``"reducemean"`` (ReduceMean over H, W).
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth}")
    if pool not in ("gap", "reducemean"):
        raise ValueError(f"pool must be 'gap' or 'reducemean', got {pool!r}")
    _check_batch(batch)
    n = (depth - 2) // 6
    b = _Builder(seed)
    x = b.relu(b.bn(b.conv("input", "conv1", 3, 16, 3), "bn1", 16), "relu")
    c = 16
    for stage, planes in enumerate((16, 32, 64)):
        for j in range(n):
            stride = 2 if stage > 0 and j == 0 else 1
            x, c = _basic_block(b, x, f"layer{stage + 1}.{j}", c, planes, stride)
    if pool == "gap":
        x = b.op("Flatten", [b.op("GlobalAveragePool", [x], "avgpool")], "", axis=1)
    else:
        x = b.op("ReduceMean", [x], "", axes=[2, 3], keepdims=0)
    x = b.gemm(x, "fc", c, num_classes)
    return b.build(x, [batch, 3, 32, 32], [batch, num_classes], f"cifar_resnet{depth}")


def tiny_cnn(*, seed: int = 0, batch: Batch = 1) -> onnx.ModelProto:
    """A (·, 3, 16, 16) -> (·, 10) network that uses many ops once, for per-op tests.

    Covers Conv with bias, grouped and depthwise Conv, BatchNormalization, Relu,
    Clip (ReLU6 with min/max inputs), MaxPool, AveragePool, Concat, a residual Add,
    GlobalAveragePool, Flatten, Reshape, Identity, Dropout, Gemm, MatMul with a
    constant weight and Softmax.
    """
    _check_batch(batch)
    b = _Builder(seed)
    lo = b.param("clip.min", np.array(0.0, np.float32))
    hi = b.param("clip.max", np.array(6.0, np.float32))

    x = b.conv("input", "stem.0", 3, 8, 3, bias=True)  # 8x16x16
    x = b.relu(b.bn(x, "stem.1", 8), "stem.2")
    x = b.bn(b.conv(x, "group.0", 8, 8, 3, group=2), "group.1", 8)
    x = b.op("Clip", [x, lo, hi], "group.2")  # ReLU6
    x = b.relu(b.conv(x, "dw.0", 8, 8, 3, group=8, bias=True), "dw.1")
    a = b.maxpool(x, "branch_a", 2, 2)  # 8x8x8
    p = b.op("AveragePool", [x], "branch_b.0", kernel_shape=[2, 2], strides=[2, 2])
    p = b.relu(b.conv(p, "branch_b.1", 8, 8, 1, bias=True), "branch_b.2")
    x = b.op("Concat", [a, p], "", axis=1)  # 16x8x8
    y = b.bn(b.conv(x, "mix.0", 16, 16, 1), "mix.1", 16)
    x = b.relu(b.op("Add", [y, x], "mix"), "mix.2")
    x = b.op("Identity", [x], "")
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x], "pool")], "", axis=1)  # 16
    x = b.op("Dropout", [x], "drop")
    x = b.relu(b.gemm(x, "fc", 16, 32), "fc_relu")
    shape = b.param("head.shape", np.array([0, 2, 16], np.int64))
    x = b.op("Reshape", [x, shape], "head")  # 2x16
    w = b.param("head.weight", b.he_normal((16, 5), 16))
    x = b.op("MatMul", [x, w], "head")  # 2x5
    x = b.op("Flatten", [x], "head", axis=1)  # 10
    x = b.op("Softmax", [x], "", axis=-1)
    return b.build(x, [batch, 3, 16, 16], [batch, 10], "tiny_cnn")


def prunable_weight_names(model: onnx.ModelProto) -> list[str]:
    """Names of the weights SynFlow scores, in node order, each once.

    These are the initializers that are input 1 of Conv/ConvTranspose/Gemm, or the
    constant operand of MatMul (the first initializer input, if both are).
    """
    inits = {t.name for t in model.graph.initializer}
    names: list[str] = []
    seen: set[str] = set()
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
            candidates = list(node.input[1:2])
        elif node.op_type == "MatMul":
            candidates = list(node.input[:2])
        else:
            continue
        for name in candidates:
            if name in inits and name not in seen:
                seen.add(name)
                names.append(name)
                break
    return names


def param_count(model: onnx.ModelProto, names: Sequence[str] | None = None) -> int:
    """Number of elements in the given initializers (default: all of them)."""
    wanted = None if names is None else set(names)
    return sum(
        math.prod(t.dims) for t in model.graph.initializer if wanted is None or t.name in wanted
    )
