"""The synthetic models of ``netgen`` are valid, runnable, deterministic and shaped as promised."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import netgen
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper


@dataclass(frozen=True)
class Case:
    build: Callable[..., onnx.ModelProto]  # called as build(seed=..., batch=...)
    input_shape: tuple[int, ...]  # without the batch dim
    num_outputs: int
    num_prunable: int


CASES: dict[str, Case] = {
    "mlp300": Case(lambda **kw: netgen.mlp(300, 16, 12, 7, **kw), (12,), 7, 300),
    "mlp_matmul_softmax": Case(
        lambda **kw: netgen.mlp(5, 16, 12, 7, softmax=True, use_matmul=True, **kw), (12,), 7, 5
    ),
    "vgg16": Case(lambda **kw: netgen.vgg("vgg16", width_div=8, **kw), (3, 32, 32), 100, 14),
    "vgg11_nobn_64": Case(
        lambda **kw: netgen.vgg("vgg11", batch_norm=False, width_div=8, input_hw=64, **kw),
        (3, 64, 64),
        100,
        9,
    ),
    "vgg19": Case(lambda **kw: netgen.vgg("vgg19", width_div=16, **kw), (3, 32, 32), 100, 17),
    # 1 stem + 16 block convs + 3 projections + fc
    "resnet18": Case(
        lambda **kw: netgen.resnet(18, input_hw=64, width=16, **kw), (3, 64, 64), 1000, 21
    ),
    # 1 stem + 48 block convs + 4 projections + fc
    "resnet50": Case(
        lambda **kw: netgen.resnet(50, input_hw=64, width=8, num_classes=10, **kw),
        (3, 64, 64),
        10,
        54,
    ),
    # 1 stem + 18 block convs + 2 projections + fc
    "cifar_resnet20": Case(lambda **kw: netgen.cifar_resnet(20, **kw), (3, 32, 32), 10, 22),
    "cifar_resnet20_reducemean": Case(
        lambda **kw: netgen.cifar_resnet(20, pool="reducemean", **kw), (3, 32, 32), 10, 22
    ),
    "tiny_cnn": Case(lambda **kw: netgen.tiny_cnn(**kw), (3, 16, 16), 10, 7),
}

names = pytest.mark.parametrize("name", list(CASES))


@functools.cache
def _model(name: str, seed: int = 0, batch: int | str = 1) -> onnx.ModelProto:
    return CASES[name].build(seed=seed, batch=batch)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"input": x})
    return np.asarray(y)


def _input(name: str, batch: int = 1) -> np.ndarray:
    shape = (batch, *CASES[name].input_shape)
    return np.random.default_rng(123).standard_normal(shape).astype(np.float32)


@names
def test_checker_and_header(name: str) -> None:
    model = _model(name)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == netgen.IR_VERSION == 10
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, *CASES[name].input_shape]


@names
def test_runs_with_finite_output(name: str) -> None:
    y = _run(_model(name), _input(name))
    assert y.shape == (1, CASES[name].num_outputs)
    assert np.isfinite(y).all()
    assert np.abs(y).max() > 0


@names
def test_symbolic_batch(name: str) -> None:
    model = _model(name, batch="N")
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    x = _input(name, batch=3)
    y = _run(model, x)
    assert y.shape == (3, CASES[name].num_outputs)
    # Same weights as the batch-1 model, and batch rows are independent.
    np.testing.assert_allclose(y[1:2], _run(_model(name), x[1:2]), rtol=1e-4, atol=1e-5)


@names
def test_deterministic_per_seed(name: str) -> None:
    first = _model(name).SerializeToString()
    assert CASES[name].build(seed=0, batch=1).SerializeToString() == first
    assert _model(name, seed=1).SerializeToString() != first


@names
def test_names_and_prunable_weights(name: str) -> None:
    model = _model(name)
    node_names = [n.name for n in model.graph.node]
    assert all(n.startswith("/") for n in node_names)
    assert len(set(node_names)) == len(node_names)
    init_names = [t.name for t in model.graph.initializer]
    assert len(set(init_names)) == len(init_names)

    prunable = netgen.prunable_weight_names(model)
    assert len(prunable) == CASES[name].num_prunable
    assert set(prunable) <= set(init_names)
    assert all(p.endswith("weight") for p in prunable)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert all(inits[p].dtype == np.float32 and np.all(inits[p] != 0) for p in prunable)


def test_torch_style_initializer_names() -> None:
    vgg = {t.name for t in _model("vgg16").graph.initializer}
    assert {
        "features.0.weight",
        "features.0.bias",
        "features.1.running_mean",
        "classifier.weight",
    } <= vgg
    res = {t.name for t in _model("resnet18").graph.initializer}
    assert {
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.running_mean",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.bias",
        "fc.weight",
        "fc.bias",
    } <= res
    assert not any(n.startswith("layer1.0.downsample") for n in res)  # identity shortcut
    node_names = {n.name for n in _model("resnet18").graph.node}
    assert "/layer1/0/conv1/Conv" in node_names


def test_batchnorm_stats_are_nontrivial() -> None:
    inits = {t.name: numpy_helper.to_array(t) for t in _model("resnet18").graph.initializer}
    mean, var = inits["layer1.0.bn1.running_mean"], inits["layer1.0.bn1.running_var"]
    scale, shift = inits["layer1.0.bn1.weight"], inits["layer1.0.bn1.bias"]
    assert np.all((var >= 0.5) & (var <= 2.0))
    assert np.all(mean != 0) and np.all(shift != 0) and np.all(scale != 1)
    assert np.std(mean) > 0.1 and np.std(scale) > 0.05
    assert np.all(inits["fc.bias"] != 0)


def test_tiny_cnn_covers_ops() -> None:
    model = _model("tiny_cnn")
    ops = {n.op_type for n in model.graph.node}
    assert ops >= {
        "Conv", "BatchNormalization", "Relu", "Clip", "MaxPool", "AveragePool", "Concat", "Add",
        "GlobalAveragePool", "Flatten", "Reshape", "Identity", "Dropout", "Gemm", "MatMul",
        "Softmax",
    }  # fmt: skip
    groups = sorted(
        a.i
        for n in model.graph.node
        if n.op_type == "Conv"
        for a in n.attribute
        if a.name == "group"
    )
    assert groups[-2:] == [2, 8]  # grouped and depthwise
    clip = next(n for n in model.graph.node if n.op_type == "Clip")
    assert len(clip.input) == 3


@pytest.mark.parametrize("name", ["mlp_matmul_softmax", "tiny_cnn"])
def test_softmax_outputs_are_distributions(name: str) -> None:
    y = _run(_model(name), _input(name))
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-5)


def test_mlp_layer_kinds() -> None:
    gemm = netgen.mlp(3, 8, 4, 2)
    assert [n.op_type for n in gemm.graph.node] == ["Gemm", "Relu", "Gemm", "Relu", "Gemm"]
    assert netgen.prunable_weight_names(gemm) == [
        "layers.0.weight",
        "layers.2.weight",
        "layers.4.weight",
    ]
    matmul = netgen.mlp(2, 8, 4, 2, use_matmul=True)
    assert [n.op_type for n in matmul.graph.node] == ["MatMul", "Add", "Relu", "MatMul", "Add"]
    w = next(t for t in matmul.graph.initializer if t.name == "layers.0.weight")
    assert list(w.dims) == [4, 8]  # (in, out), TensorFlow layout


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        netgen.resnet(19)
    with pytest.raises(ValueError):
        netgen.cifar_resnet(21)
    with pytest.raises(ValueError):
        netgen.vgg("vgg17")
    with pytest.raises(ValueError):
        netgen.cifar_resnet(20, pool="max")
