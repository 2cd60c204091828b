"""map_masks: masks keyed by invented initializer names find their parameters by value,
through transposes and reshapes; unmatched and ambiguous masks are one error listing them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxflow
from onnxflow.mapping import MaskMappingError


def scrambled_model(params: dict[str, np.ndarray]) -> onnx.ModelProto:
    """x[1,8] -> MatMul(fc1 stored transposed as 'val_0') -> Conv-free chain of MatMuls whose
    weights carry exporter-style names: fc2 stored as-is ('onnx::MatMul_7'), proj stored
    reshaped from a 1x1 conv kernel (6x6x1x1 -> 6x6, 'const_fold_opt__3'), and conv as
    HWIO -> OIHW (Keras style) in a Conv node ('model/conv/ReadVariableOp:0')."""
    inits = [
        numpy_helper.from_array(params["fc1.weight"].T.copy(), "val_0"),
        numpy_helper.from_array(params["fc2.weight"], "onnx::MatMul_7"),
        numpy_helper.from_array(params["proj.weight"].reshape(6, 6), "const_fold_opt__3"),
        numpy_helper.from_array(
            params["conv/kernel"].transpose(3, 2, 0, 1).copy(), "model/conv/ReadVariableOp:0"
        ),
        numpy_helper.from_array(np.array([1, 6, 1, 1], np.int64), "shape4"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "val_0"], ["h1"]),
        helper.make_node("MatMul", ["h1", "onnx::MatMul_7"], ["h2"]),
        helper.make_node("MatMul", ["h2", "const_fold_opt__3"], ["h3"]),
        helper.make_node("Reshape", ["h3", "shape4"], ["h4"]),
        helper.make_node("Conv", ["h4", "model/conv/ReadVariableOp:0"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "scrambled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def make_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": rng.normal(size=(7, 8)).astype(np.float32),  # torch Linear: out x in
        "fc1.bias": rng.normal(size=(7,)).astype(np.float32),
        "fc2.weight": rng.normal(size=(7, 6)).astype(np.float32),
        "proj.weight": rng.normal(size=(6, 6, 1, 1)).astype(np.float32),
        "conv/kernel": rng.normal(size=(1, 1, 6, 5)).astype(np.float32),  # HWIO
        "bn.num_batches_tracked": np.array(3, np.int64),
    }


def test_masks_map_through_transpose_reshape_and_hwio_layouts() -> None:
    params = make_params()
    model = scrambled_model(params)
    result = onnxflow.prune(model, sparsity=0.6, iterations=3)
    mapped = onnxflow.map_masks(result.masks, model, params)
    assert set(mapped) == {"fc1.weight", "fc2.weight", "proj.weight", "conv/kernel"}
    np.testing.assert_array_equal(mapped["fc1.weight"], result.masks["val_0"].T)
    np.testing.assert_array_equal(mapped["fc2.weight"], result.masks["onnx::MatMul_7"])
    np.testing.assert_array_equal(
        mapped["proj.weight"], result.masks["const_fold_opt__3"].reshape(6, 6, 1, 1)
    )
    np.testing.assert_array_equal(
        mapped["conv/kernel"],
        result.masks["model/conv/ReadVariableOp:0"].transpose(2, 3, 1, 0),
    )
    # Each mapped mask zeroes exactly the values the pruned model zeroed.
    pruned = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    for name, key in (("fc1.weight", "val_0"), ("proj.weight", "const_fold_opt__3")):
        kept = np.sort((params[name] * mapped[name]).ravel())
        np.testing.assert_array_equal(kept, np.sort(pruned[key].ravel()))


def test_masks_file_and_model_path_are_accepted(tmp_path) -> None:
    params = make_params()
    model = scrambled_model(params)
    onnx.save(model, tmp_path / "m.onnx")
    result = onnxflow.prune(tmp_path / "m.onnx", sparsity=0.5, iterations=2)
    onnxflow.save(result, tmp_path / "p.onnx", masks=tmp_path / "masks.npz")
    mapped = onnxflow.map_masks(tmp_path / "masks.npz", tmp_path / "m.onnx", params)
    np.testing.assert_array_equal(mapped["fc1.weight"], result.masks["val_0"].T)


def test_unmatched_masks_are_listed_in_one_error() -> None:
    params = make_params()
    model = scrambled_model(params)
    result = onnxflow.prune(model, sparsity=0.5, iterations=2)
    params_bad = dict(params)
    params_bad["fc2.weight"] = params["fc2.weight"] + 1.0  # e.g. BatchNorm folded in
    del params_bad["conv/kernel"]
    with pytest.raises(MaskMappingError) as err:
        onnxflow.map_masks(result.masks, model, params_bad)
    message = str(err.value)
    assert "\n" not in message
    assert sorted(err.value.unmatched) == ["model/conv/ReadVariableOp:0", "onnx::MatMul_7"]
    assert "onnx::MatMul_7" in message and "model/conv/ReadVariableOp:0" in message
    assert isinstance(err.value, onnxflow.OnnxflowError)


def twin_model(names: tuple[str, str], shared: bool) -> tuple[onnx.ModelProto, np.ndarray]:
    """x -> MatMul(a) -> Relu -> MatMul(b), both weights holding the same values (as the
    layers of an nn.TransformerEncoder do at initialization); `shared`: stored once."""
    w = np.random.default_rng(3).normal(size=(4, 4)).astype(np.float32)
    a, b = names
    inits = [numpy_helper.from_array(w, a)]
    if not shared:
        inits.append(numpy_helper.from_array(w.copy(), b))
    nodes = [
        helper.make_node("MatMul", ["x", a], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", a if shared else b], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "twins",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model, w


def test_equal_weights_with_invented_names_are_ambiguous() -> None:
    model, w = twin_model(("val_1", "val_2"), shared=False)
    masks = {"val_1": np.eye(4, dtype=bool), "val_2": ~np.eye(4, dtype=bool)}
    params = {"l1.weight": w.T.copy(), "l2.weight": w.T.copy()}
    with pytest.raises(MaskMappingError) as err:
        onnxflow.map_masks(masks, model, params)
    assert err.value.ambiguous == {
        "val_1": ["l1.weight", "l2.weight"],
        "val_2": ["l1.weight", "l2.weight"],
    }
    assert err.value.unmatched == []
    assert "several parameters" in str(err.value)


def test_equal_weights_are_paired_by_kept_names() -> None:
    model, w = twin_model(("l1.weight", "l2.weight"), shared=False)
    masks = {"l1.weight": np.eye(4, dtype=bool), "l2.weight": ~np.eye(4, dtype=bool)}
    out = onnxflow.map_masks(masks, model, {"l1.weight": w, "l2.weight": w.copy()})
    np.testing.assert_array_equal(out["l1.weight"], np.eye(4, dtype=bool))
    np.testing.assert_array_equal(out["l2.weight"], ~np.eye(4, dtype=bool))


def test_one_deduplicated_weight_masks_every_parameter_it_stands_for() -> None:
    """Exporters store equal parameters once; the model then uses that one pruned tensor in
    both places, so both parameters take its mask."""
    model, w = twin_model(("onnx::MatMul_9", ""), shared=True)
    result = onnxflow.prune(model, sparsity=0.5, iterations=2)
    out = onnxflow.map_masks(result.masks, model, {"l1.weight": w.T.copy(), "l2.weight": w.T})
    for name in ("l1.weight", "l2.weight"):
        np.testing.assert_array_equal(out[name], result.masks["onnx::MatMul_9"].T)


def test_a_weight_in_two_layouts_with_different_masks_is_ambiguous() -> None:
    """A symmetric weight matches as stored and transposed; unless its mask is symmetric too,
    the two layouts give different masks and the mapping must refuse to guess."""
    sym = np.array([[1.0, 2.0], [2.0, 3.0]], np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(sym, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    asym = np.array([[True, False], [True, True]])
    with pytest.raises(MaskMappingError, match=r"in 2 layouts"):
        onnxflow.map_masks({"w": asym}, model, {"lin.weight": sym})
    symm = np.array([[True, False], [False, True]])
    out = onnxflow.map_masks({"w": symm}, model, {"lin.weight": sym})
    np.testing.assert_array_equal(out["lin.weight"], symm)


def test_equal_weights_one_left_unpruned_are_not_all_given_the_mask() -> None:
    """Two stored copies of equal values, one pruned and one not (left out by --exclude):
    the single mask cannot be given to both parameters, nor can it be told which."""
    model, w = twin_model(("val_1", "val_2"), shared=False)
    masks = {"val_1": np.eye(4, dtype=bool)}
    with pytest.raises(MaskMappingError) as err:
        onnxflow.map_masks(masks, model, {"l1.weight": w.T.copy(), "l2.weight": w.T.copy()})
    assert err.value.ambiguous == {"val_1": ["l1.weight", "l2.weight"]}
