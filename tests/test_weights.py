"""Where weights come from: views (Identity, Cast, Transpose, Reshape), Constant nodes, sharing.

Each case builds a model whose weight reaches its layer indirectly and an equivalent model
that stores the weight directly; the scores must agree (mapped through the view), and the
pruned model must zero the stored tensor, keep its dtype, and run.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxflow
from onnxflow.tensors import read_stored

RNG = np.random.default_rng(7)


def make(nodes, inits, x_shape, y_shape, extra=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


W = RNG.normal(size=(6, 5)).astype(np.float32)  # (out, in)
W2 = RNG.normal(size=(4, 6)).astype(np.float32)


def direct() -> onnx.ModelProto:
    """x(1,5) -> MatMul(W^T stored) -> Relu -> Gemm(W2, transB) -> y(1,4)."""
    nodes = [
        helper.make_node("MatMul", ["x", "wt"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1),
    ]
    return make(nodes, {"wt": W.T.copy(), "w2": W2}, (1, 5), (1, 4))


VIEWS = {
    "transpose": (
        [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0])],
        {"w": W},
        lambda s: s.T,
    ),
    "reshape": (
        [helper.make_node("Reshape", ["w", "shape"], ["wt"])],
        {"w": W.T.reshape(-1).copy(), "shape": np.array([5, 6], np.int64)},
        lambda s: s.reshape(-1),
    ),
    "identity_cast_fp16": (
        [
            helper.make_node("Identity", ["w"], ["wi"]),
            helper.make_node("Cast", ["wi"], ["wt"], to=TensorProto.FLOAT),
        ],
        {"w": W.T.astype(np.float16)},
        lambda s: s,
    ),
    "transpose_of_transpose_and_reshape": (
        [
            helper.make_node("Reshape", ["w", "shape"], ["w2d"]),
            helper.make_node("Transpose", ["w2d"], ["wt"], perm=[1, 0]),
        ],
        {"w": W.reshape(-1).copy(), "shape": np.array([6, 5], np.int64)},
        lambda s: s.T.reshape(-1),
    ),
}


@pytest.mark.parametrize("case", sorted(VIEWS))
def test_weight_seen_through_a_view_is_pruned_in_storage(case: str) -> None:
    view_nodes, inits, to_stored = VIEWS[case]
    nodes = [
        *view_nodes,
        helper.make_node("MatMul", ["x", "wt"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1),
    ]
    model = make(nodes, {**inits, "w2": W2}, (1, 5), (1, 4))
    want = onnxflow.score(direct()).log_scores
    got = onnxflow.score(model)
    assert [layer.name for layer in got.dag.layers] == ["w", "w2"]
    tol = 1e-3 if "fp16" in case else 1e-5  # the float16 weight differs from the float32 one
    np.testing.assert_allclose(got.log_scores["w"], to_stored(want["wt"]), atol=tol)
    np.testing.assert_allclose(got.log_scores["w2"], want["w2"], atol=tol)

    result = onnxflow.prune(model, sparsity=0.5, iterations=3)
    stored = read_stored(result.model, "w")
    assert stored.dtype == inits["w"].dtype and stored.shape == inits["w"].shape
    np.testing.assert_array_equal(stored != 0, result.masks["w"])
    x = RNG.normal(size=(1, 5)).astype(np.float32)
    assert run(result.model, x).shape == (1, 4)


def test_weight_in_a_constant_node() -> None:
    """Old model-zoo files hold weights in Constant nodes rather than initializers."""
    nodes = [
        helper.make_node("Constant", [], ["wt"], value=numpy_helper.from_array(W.T.copy(), "c")),
        helper.make_node("MatMul", ["x", "wt"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1),
    ]
    model = make(nodes, {"w2": W2}, (1, 5), (1, 4))
    got = onnxflow.score(model)
    np.testing.assert_allclose(got.log_scores["wt"], onnxflow.score(direct()).log_scores["wt"])
    result = onnxflow.prune(model, sparsity=0.6, iterations=2)
    constant = read_stored(result.model, "wt")
    np.testing.assert_array_equal(constant != 0, result.masks["wt"])
    masked = W.T * result.masks["wt"]
    reference = make(
        [helper.make_node("MatMul", ["x", "wt"], ["h"]), *nodes[2:]],
        {"wt": masked, "w2": W2 * result.masks["w2"]},
        (1, 5),
        (1, 4),
    )
    x = RNG.normal(size=(1, 5)).astype(np.float32)
    np.testing.assert_allclose(run(result.model, x), run(reference, x), rtol=1e-6)


def test_shared_weight_is_one_layer_with_one_mask() -> None:
    """The same weight used twice: one layer, scores summed over its uses."""
    s = RNG.normal(size=(5, 5)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "s"], ["h1"], name="first"),
        helper.make_node("MatMul", ["h1", "s"], ["h2"], name="second"),
        helper.make_node("Gemm", ["h2", "w2"], ["y"], transB=1),
    ]
    w2 = RNG.normal(size=(4, 5)).astype(np.float32)
    model = make(nodes, {"s": s, "w2": w2}, (1, 5), (1, 4))
    got = onnxflow.score(model)
    layer = got.dag.layer("s")
    assert layer.nodes == ["first", "second"]
    # R = 1^T |w2| |s|^T |s|^T 1 ... is quadratic in |s|: score = |s| dR/d|s| sums both uses,
    # so the layer's total is 2R (Euler's theorem for a degree-2 homogeneous function).
    total = np.logaddexp.reduce(got.log_scores["s"].ravel())
    assert total == pytest.approx(got.log_flow + np.log(2.0), abs=1e-5)
    result = onnxflow.prune(model, sparsity=0.5, iterations=2)
    assert result.masks["s"].shape == (5, 5)
    np.testing.assert_array_equal(read_stored(result.model, "s") != 0, result.masks["s"])


def test_outputs_without_weights_or_float_values_are_ignored() -> None:
    """A second float output straight from the input, and an integer ArgMax output, do not
    change R or the scores."""
    base = direct()
    extra = onnx.ModelProto()
    extra.CopyFrom(base)
    extra.graph.node.extend(
        [
            helper.make_node("Relu", ["x"], ["passthrough"]),
            helper.make_node("ArgMax", ["y"], ["label"], axis=1),
        ]
    )
    extra.graph.output.extend(
        [
            helper.make_tensor_value_info("passthrough", TensorProto.FLOAT, [1, 5]),
            helper.make_tensor_value_info("label", TensorProto.INT64, [1, 1]),
        ]
    )
    want, got = onnxflow.score(base), onnxflow.score(extra)
    assert got.log_flow == pytest.approx(want.log_flow, abs=1e-6)
    for name, s in want.log_scores.items():
        np.testing.assert_allclose(got.log_scores[name], s, atol=1e-6)
