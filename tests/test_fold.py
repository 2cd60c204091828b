"""BatchNormalization folded into the convolution before it: same scores, fewer ops."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import netgen
import numpy as np
import pytest

import onnxflow
import onnxflow.flow.model as flow_model
from onnxflow.analyze import normalized, weights_of
from onnxflow.flow.engine import FlowEngine


def engine_of(model) -> FlowEngine:
    analysis = weights_of(*normalized(model))  # not linearized
    return FlowEngine(analysis.graph, analysis.dag, "cpu")


def test_every_conv_batchnorm_pair_is_folded() -> None:
    model = netgen.cifar_resnet(20)
    engine = engine_of(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert set(engine.flow.weight_factors) == {n.input[1] for n in convs}
    ops = [n.op_type for n in engine.flow.model.graph.node]
    with no_folding():
        unfolded = engine_of(model)
    unfolded_ops = [n.op_type for n in unfolded.flow.model.graph.node]
    assert unfolded_ops.count("Mul") - ops.count("Mul") == 2 * len(convs)  # forward, backward
    for name, factor in engine.flow.weight_factors.items():  # fed |W| * s, s > 0 per channel
        np.testing.assert_allclose(engine.weights[name], engine.magnitude(name) * factor, rtol=1e-6)


@contextmanager
def no_folding() -> Iterator[None]:
    """Flow models built inside fold nothing (the reference the folding is checked against)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(flow_model, "batchnorm_folds", lambda graph, dag: ({}, set()))
        yield


@pytest.mark.parametrize(
    "build",
    [lambda: netgen.cifar_resnet(20), lambda: netgen.vgg("vgg11", width_div=4)],
    ids=["resnet20", "vgg11_bn"],
)
def test_folding_leaves_scores_and_masks_unchanged(build) -> None:
    model = build()
    folded_scores = onnxflow.score(model)
    folded = onnxflow.prune(model, sparsity=0.9, iterations=5)
    with no_folding():
        plain_scores = onnxflow.score(model)
        plain = onnxflow.prune(model, sparsity=0.9, iterations=5)
    assert folded_scores.log_flow == pytest.approx(plain_scores.log_flow, rel=1e-6)
    for name, want in plain_scores.log_scores.items():
        np.testing.assert_allclose(folded_scores.log_scores[name], want, rtol=0, atol=1e-5)
    disagree = sum(int(np.count_nonzero(folded.masks[n] != plain.masks[n])) for n in plain.masks)
    total = sum(m.size for m in plain.masks.values())
    assert disagree <= 1e-4 * total  # float32 rounding may swap near-ties only


def test_a_batchnorm_whose_conv_output_is_also_used_elsewhere_is_not_folded() -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        *(
            numpy_helper.from_array(v.astype(np.float32), n)
            for n, v in (
                ("gamma", rng.uniform(0.5, 2, 4)),
                ("beta", rng.normal(size=4)),
                ("mean", rng.normal(size=4)),
                ("var", rng.uniform(0.5, 2, 4)),
            )
        ),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["y", "gamma", "beta", "mean", "var"], ["a"]),
        helper.make_node("Relu", ["y"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 5, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    engine = engine_of(model)
    assert engine.flow.weight_factors == {}
    np.testing.assert_array_equal(engine.weights["w"], engine.magnitude("w"))
    # R = sum over outputs of (s + 1) * conv(1, |W|) per channel: check the total flow.
    s = np.abs(numpy_helper.to_array(inits[1])) / np.sqrt(numpy_helper.to_array(inits[4]) + 1e-5)
    w = np.abs(numpy_helper.to_array(inits[0])).astype(np.float64)
    x = np.pad(np.ones((3, 5, 5)), ((0, 0), (1, 1), (1, 1)))
    conv = np.array(
        [
            [[np.sum(w[o] * x[:, i : i + 3, j : j + 3]) for j in range(5)] for i in range(5)]
            for o in range(4)
        ]
    )
    want = np.log(np.sum(conv * (s[:, None, None] + 1)))
    assert onnxflow.score(model).log_flow == pytest.approx(want, rel=1e-6)
