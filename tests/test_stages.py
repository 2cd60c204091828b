"""The typed stages (onnxflow/stages.py) on graphs of a few nodes: analyze() gives the typed
fields, materialize() decides the storage and save() follows it, graph passes keep their
declared contract, and score/prune refuse R = 0 alike."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxflow
from onnxflow.analyze import analyze
from onnxflow.errors import OnnxflowError
from onnxflow.external import model_bytes
from onnxflow.flow.zero_init import ZeroInit
from onnxflow.inspect import inspect_model
from onnxflow.materialize import materialize
from onnxflow.passes import GraphPass, LinearizePass, PassResult

RNG = np.random.default_rng(0)


def _w(name: str, *shape: int, zero: bool = False) -> TensorProto:
    values = np.zeros(shape, np.float32) if zero else RNG.standard_normal(shape)
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def three_layers(*, zero_head: bool = False, batch: int | str = 1) -> onnx.ModelProto:
    """x -> MatMul(W1) -> swish (x * sigmoid(x)) -> MatMul(W2) -> MatMul(W3) -> y."""
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
        helper.make_node("Sigmoid", ["h"], ["s"], name="sig"),
        helper.make_node("Mul", ["h", "s"], ["a"], name="swish"),
        helper.make_node("MatMul", ["a", "W2"], ["b"], name="fc2"),
        helper.make_node("MatMul", ["b", "W3"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2])],
        [_w("W1", 4, 6), _w("W2", 6, 5), _w("W3", 5, 2, zero=zero_head)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def test_analyze_gives_the_typed_fields_of_a_model_in_memory() -> None:
    model = three_layers(zero_head=True)
    before = model.SerializeToString()
    analysis = analyze(model, exclude=("W2", "nomatch*"))
    assert analysis.model is model and model.SerializeToString() == before
    source = analysis.source
    assert (source.label, source.base_dir, source.external_data, source.owned) == (
        "model",
        None,
        False,
        False,
    )
    assert source.bytes_before == len(before)
    # W2 is excluded, W3 (all zero) is read as ones and not prunable: only W1 is left.
    assert [layer.name for layer in analysis.dag.layers] == ["W1"]
    assert [layer.name for layer in analysis.excluded] == ["W2"]
    assert analysis.exclude_unmatched == ["nomatch*"]
    assert analysis.zero_init == ZeroInit(("W3",), ())
    assert analysis.dag.read_as_ones == frozenset({"W3"})
    # The graph is normalized (static input shape) and linearized (swish became its input).
    assert list(analysis.graph.inputs[0].shape) == [1, 4]
    assert not {n.op for n in analysis.graph.nodes} & {"Sigmoid", "Mul"}
    assert analysis.notes == []


def test_analyze_of_a_file_owns_its_model_and_reads_its_external_data(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(
        three_layers(), path, save_as_external_data=True, location="m.bin", size_threshold=0
    )
    analysis = analyze(path, zero_init="strict")
    assert analysis.source.label == str(path) and analysis.source.owned
    assert analysis.source.base_dir == tmp_path.resolve()
    assert analysis.source.external_data
    assert analysis.source.bytes_before == onnx.load(path).ByteSize()  # data and protobuf
    assert [layer.name for layer in analysis.dag.layers] == ["W1", "W2", "W3"]
    assert analysis.zero_init == ZeroInit()


def test_analyze_takes_input_shapes_and_checks_its_own_arguments(tmp_path: Path) -> None:
    model = three_layers(batch="n")
    assert list(analyze(model).graph.inputs[0].shape) == [1, 4]  # free batch -> 1
    assert list(analyze(model, input_shapes={"x": (3, 4)}).graph.inputs[0].shape) == [3, 4]
    with pytest.raises(OnnxflowError, match="input_shapes for 'x' must be positive"):
        analyze(model, input_shapes={"x": (0, 4)})
    # The argument is checked before the file is read.
    with pytest.raises(OnnxflowError, match="zero_init must be"):
        analyze(tmp_path / "missing.onnx", zero_init="zero")  # type: ignore[arg-type]


def test_materialize_masks_a_copy_and_plans_its_storage() -> None:
    model = three_layers()
    before = model.SerializeToString()
    analysis = analyze(model)
    masks = {layer.name: np.zeros(layer.shape, bool) for layer in analysis.dag.layers}
    masks["W1"][0, 0] = True
    out = materialize(analysis, masks)
    assert model.SerializeToString() == before  # a model passed in memory is not modified
    w1 = numpy_helper.to_array(next(t for t in out.model.graph.initializer if t.name == "W1"))
    assert np.count_nonzero(w1) == 1
    assert out.bytes_after == out.bytes_dense == model_bytes(out.model)
    assert not out.storage.external_data and not out.storage.sparse

    sparse = materialize(analyze(model), masks, sparse_storage=True)
    assert sparse.storage.sparse and not sparse.storage.external_data
    assert {s.values.name for s in sparse.model.graph.sparse_initializer} == {"W1", "W2", "W3"}
    assert sparse.bytes_dense == out.bytes_dense and sparse.bytes_after < sparse.bytes_dense


def test_materialize_keeps_external_data_of_a_file_and_masks_it_in_place(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(
        three_layers(), path, save_as_external_data=True, location="m.bin", size_threshold=0
    )
    analysis = analyze(path)
    masks = {layer.name: np.ones(layer.shape, bool) for layer in analysis.dag.layers}
    out = materialize(analysis, masks)
    assert out.storage.external_data  # the input had external data
    assert out.model is analysis.model  # owned: masked in place, no second copy


def test_save_follows_the_storage_plan_not_the_report(tmp_path: Path) -> None:
    result = onnxflow.prune(three_layers(), sparsity=0.5, iterations=2)
    assert not result.output.storage.external_data and not result.report.external_data
    onnxflow.save(result, tmp_path / "inline.onnx")
    assert not (tmp_path / "inline.onnx.data").exists()
    plan = dataclasses.replace(result.output.storage, external_data=True)
    external = dataclasses.replace(result, output=dataclasses.replace(result.output, storage=plan))
    written = onnxflow.save(external, tmp_path / "ext.onnx")
    assert written["external data"] == tmp_path / "ext.onnx.data"
    assert (tmp_path / "ext.onnx.data").is_file()  # (these weights are too small to move)
    # Both files hold the same model.
    a, b = onnx.load(tmp_path / "inline.onnx"), onnx.load(tmp_path / "ext.onnx")
    for ta, tb in zip(a.graph.initializer, b.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(ta), numpy_helper.to_array(tb))


def test_prune_result_unpacks_as_before() -> None:
    result = onnxflow.prune(three_layers(), sparsity=0.5, iterations=2)
    model, masks, log_scores, report = result
    assert model is result.output.model and masks is result.selection.masks
    assert log_scores is result.selection.log_scores and report is result.report
    assert report.bytes_after == result.output.bytes_after
    assert report.provider == result.selection.provider


def zero_factor() -> onnx.ModelProto:
    """y = (x W) * 0: no input-output path carries flow whatever the weights (under
    zero_init="strict"; "ones" reads the zero factor as a zero-initialized layer scale)."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"),
        helper.make_node("Mul", ["h", "zero"], ["y"], name="kill"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [_w("W", 4, 3), numpy_helper.from_array(np.zeros((1, 3), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize(
    ("build", "zero_init", "cause"),
    [
        (lambda: three_layers(zero_head=True), "strict", "every input-output path crosses"),
        (zero_factor, "strict", "no input-output path carries flow whatever"),
    ],
    ids=["zero-weight", "zero-factor"],
)
def test_score_and_prune_refuse_r_zero_alike(build, zero_init: str, cause: str) -> None:
    """An all-zero network has no ranking: `score` raises prune's error (not log R = -inf)."""
    with pytest.raises(OnnxflowError, match=r"R = 0") as scored:
        onnxflow.score(build(), zero_init=zero_init)
    with pytest.raises(OnnxflowError, match=r"R = 0") as pruned:
        onnxflow.prune(build(), sparsity=0.5, iterations=2, zero_init=zero_init)
    assert str(scored.value) == str(pruned.value) and cause in str(scored.value)
    assert inspect_model(build()).dag.layers  # inspect only analyses: it does not refuse


class _Renames(GraphPass):
    name = "renames"
    in_place = True

    def call(self, graph: gs.Graph) -> PassResult:
        return PassResult(graph.copy(), modified=True)  # says in place, returns a new graph


class _Fails(GraphPass):
    name = "fails"
    in_place = True

    def call(self, graph: gs.Graph) -> PassResult:
        raise OnnxflowError("node 'x' is odd")


def test_graph_passes_keep_their_declared_contract() -> None:
    graph = gs.import_onnx(three_layers())
    with pytest.raises(RuntimeError, match="the renames pass declares it works in place"):
        _Renames()(graph)
    with pytest.raises(OnnxflowError) as failed:
        _Fails()(graph)
    assert str(failed.value) == "node 'x' is odd"  # the user's message is unchanged
    assert "(in the fails pass)" in failed.value.__notes__
    first = LinearizePass()(graph)
    assert first.graph is graph and first.modified  # the swish became its input
    assert not LinearizePass()(graph).modified
