"""LinearizePass: exporter spellings of one function score like the function itself."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rulecheck import (
    RNG,
    assert_same_scores,
    model,
)

import onnxflow


def fused() -> onnx.ModelProto:
    return model(
        [helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], axis=-1)], {}
    )


def decomposed() -> onnx.ModelProto:
    c = {"two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32)}
    nodes = [
        helper.make_node("ReduceMean", ["h"], ["mean"], axes=[-1]),
        helper.make_node("Sub", ["h", "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["norm"]),
        helper.make_node("Mul", ["norm", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["n"]),
    ]
    return model(nodes, c)


def rms() -> onnx.ModelProto:
    c = {"eps": np.array(1e-6, np.float32)}
    nodes = [
        helper.make_node("Mul", ["h", "h"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1]),
        helper.make_node("Add", ["ms", "eps"], ["me"]),
        helper.make_node("Sqrt", ["me"], ["rms"]),
        helper.make_node("Div", ["h", "rms"], ["norm"]),
        helper.make_node("Mul", ["norm", "gamma"], ["n"]),
    ]
    return model(nodes, c)


def gated(kind: str) -> onnx.ModelProto:
    c = {
        "half": np.array(0.5, np.float32),
        "one": np.array(1.0, np.float32),
        "root2": np.array(np.sqrt(2.0), np.float32),
        "a": np.array(0.2, np.float32),
    }
    spellings = {
        "swish": [
            helper.make_node("Sigmoid", ["h"], ["s"]),
            helper.make_node("Mul", ["h", "s"], ["n"]),
        ],
        "gelu": [
            helper.make_node("Div", ["h", "root2"], ["hd"]),
            helper.make_node("Erf", ["hd"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["e1"]),
            helper.make_node("Mul", ["h", "half"], ["hh"]),
            helper.make_node("Mul", ["hh", "e1"], ["n"]),
        ],
        "hard_sigmoid": [
            helper.make_node("Mul", ["h", "a"], ["ha"]),
            helper.make_node("Add", ["ha", "half"], ["hb"]),
            helper.make_node("Min", ["hb", "one"], ["hc"]),
            helper.make_node("Max", ["hc", "zero"], ["n"]),
        ],
        "relu": [helper.make_node("Relu", ["h"], ["n"])],
    }
    return model(spellings[kind], {**c, "zero": np.array(0.0, np.float32)})


def test_decomposed_layernorm_scores_like_layernormalization() -> None:
    assert_same_scores(decomposed(), fused())


def test_rmsnorm_scores_like_a_scale() -> None:
    scale_only = model([helper.make_node("Mul", ["h", "gamma"], ["n"])], {})
    assert_same_scores(rms(), scale_only)


@pytest.mark.parametrize("kind", ["swish", "gelu", "hard_sigmoid"])
def test_gated_and_saturating_activations_score_like_relu(kind: str) -> None:
    assert_same_scores(gated(kind), gated("relu"))


def test_global_max_pool_scores_like_a_full_max_pool() -> None:
    w = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
    fc = RNG.normal(size=(2, 4)).astype(np.float32)

    def build(pool: onnx.NodeProto) -> onnx.ModelProto:
        nodes = [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            pool,
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
        ]
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 7, 7])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")],
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 10
        return m

    global_pool = build(helper.make_node("GlobalMaxPool", ["c"], ["p"]))
    full_pool = build(helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[5, 5]))
    sa, sb = onnxflow.score(global_pool), onnxflow.score(full_pool)
    for name in ("w", "fc"):
        np.testing.assert_array_equal(
            np.isneginf(sa.log_scores[name]), np.isneginf(sb.log_scores[name])
        )
        finite = np.isfinite(sb.log_scores[name])
        np.testing.assert_allclose(
            sa.log_scores[name][finite], sb.log_scores[name][finite], atol=1e-5
        )
