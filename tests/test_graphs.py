"""Graphs real exports are made of: constant-condition If, weights computed in the graph,
detection post-processing, external data without `length`, onnxruntime's own log lines.

Each case is a hand-built graph (no torch needed); timm's StdConv2d/ScaledStdConv2d as
PyTorch exports them are checked in test_timm_weight_standardization_export (skipped
without torch and timm).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxflow
import onnxflow.external
from onnxflow.cli import main
from onnxflow.errors import OnnxflowError
from onnxflow.external import external_nbytes, load_small, read_external
from onnxflow.passes.inline_if import inline_constant_ifs
from onnxflow.passes.load import load_model
from onnxflow.passes.normalize import check_produced
from onnxflow.passes.selection import cut_selection

ROOT = Path(__file__).resolve().parent.parent


def _const(name: str, values: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values), name)


def _model(nodes, inits, outputs, x_shape=(1, 3, 8, 8)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def _out(name: str, shape=None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _weights() -> list[onnx.TensorProto]:
    """The same two conv weights on every call (models built twice are compared)."""
    rng = np.random.default_rng(0)
    return [
        _const("w1", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        _const("w2", rng.standard_normal((4, 4, 1, 1)).astype(np.float32)),
    ]


# -- If with a constant condition (detection exports) ----------------------------------------


def _branch(name: str, nodes, out: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [_out(out)])


def if_model(branch_returns: str) -> onnx.ModelProto:
    """conv -> If(batch == 1) -> conv: the condition folds to True once shapes are static.

    The then-branch returns a constant (`constant`), a tensor of the outer graph (`outer`,
    through an Identity as the checker wants) or a flow computed inside (`computed`)."""
    then_nodes = {
        "constant": [
            helper.make_node("Constant", [], ["t"], value=_const("v", np.ones(1, np.float32)))
        ],
        "outer": [helper.make_node("Identity", ["c1"], ["t"])],
        "computed": [helper.make_node("Relu", ["c1"], ["t"])],
    }[branch_returns]
    then = _branch("then", then_nodes, "t")
    other = _branch("else", [helper.make_node("Neg", ["c1"], ["e"])], "e")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="batch"),
        helper.make_node("Equal", ["n", "one"], ["cond"], name="is_one"),
        helper.make_node(
            "If", ["cond"], ["picked"], name="if", then_branch=then, else_branch=other
        ),
        helper.make_node("Mul", ["c1", "picked"], ["m"], name="use"),
        helper.make_node("Conv", ["m", "w2"], ["y"], name="conv2"),
    ]
    inits = [
        *_weights(),
        _const("zero", np.array(0, np.int64)),
        _const("one", np.array(1, np.int64)),
    ]
    return _model(nodes, inits, [_out("y", [1, 4, 6, 6])])


def inlined_model(branch_returns: str) -> onnx.ModelProto:
    """What `if_model` computes with the then-branch written in place of the If."""
    picked = {
        "constant": [
            helper.make_node("Constant", [], ["picked"], value=_const("v", np.ones(1, np.float32)))
        ],
        "outer": [helper.make_node("Identity", ["c1"], ["picked"])],
        "computed": [helper.make_node("Relu", ["c1"], ["picked"])],
    }[branch_returns]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        *picked,
        helper.make_node("Mul", ["c1", "picked"], ["m"], name="use"),
        helper.make_node("Conv", ["m", "w2"], ["y"], name="conv2"),
    ]
    return _model(nodes, _weights(), [_out("y", [1, 4, 6, 6])])


@pytest.mark.parametrize("branch_returns", ["constant", "outer", "computed"])
def test_constant_if_is_inlined_and_scores_as_its_branch(branch_returns) -> None:
    """graph-surgeon's flattening left a branch's constant or outer output unproduced
    ("tensor 'onnx::Slice_2557' is used before it is produced" on RetinaNet)."""
    got = onnxflow.prune(if_model(branch_returns), sparsity=0.5, iterations=2)
    want = onnxflow.prune(inlined_model(branch_returns), sparsity=0.5, iterations=2)
    assert set(got.masks) == {"w1", "w2"}
    for name in want.log_scores:
        np.testing.assert_allclose(got.log_scores[name], want.log_scores[name], rtol=1e-6)
        np.testing.assert_array_equal(got.masks[name], want.masks[name])
    # The pruned model is the original, If included, with zeros in the weights.
    assert [n.op_type for n in got.model.graph.node].count("If") == 1


def test_nested_constant_ifs_are_inlined() -> None:
    """An If in the taken branch, on a condition of the outer graph, goes too."""
    model = if_model("computed")
    outer = next(n for n in model.graph.node if n.op_type == "If")
    inner = helper.make_node(
        "If",
        ["cond"],
        ["t"],
        then_branch=_branch("in_then", [helper.make_node("Relu", ["c1"], ["t1"])], "t1"),
        else_branch=_branch("in_else", [helper.make_node("Neg", ["c1"], ["t2"])], "t2"),
    )
    then = next(a for a in outer.attribute if a.name == "then_branch")
    then.g.CopyFrom(_branch("then", [inner], "t"))
    got = onnxflow.prune(model, sparsity=0.5, iterations=2)
    want = onnxflow.prune(inlined_model("computed"), sparsity=0.5, iterations=2)
    for name in want.log_scores:
        np.testing.assert_allclose(got.log_scores[name], want.log_scores[name], rtol=1e-6)


def test_inline_constant_ifs_on_a_graph_surgeon_graph() -> None:
    graph = gs.import_onnx(if_model("constant"))
    graph.fold_constants(fold_shapes=True, flatten_subgraphs=False)
    assert any(n.op == "If" for n in graph.nodes)
    assert inline_constant_ifs(graph) == 1
    assert not any(n.op == "If" for n in graph.nodes)
    check_produced(graph)  # every tensor read has a producer
    picked = graph.tensors()["picked"]
    assert [n.op for n in picked.inputs] == ["Identity"]


def test_a_run_time_if_on_the_flow_path_is_refused_naming_the_node() -> None:
    model = if_model("computed")
    # The condition now depends on the values of x: it cannot fold.
    cond = next(n for n in model.graph.node if n.name == "is_one")
    cond.CopyFrom(helper.make_node("Greater", ["x_sum", "zero_f"], ["cond"], name="is_one"))
    model.graph.node.insert(0, helper.make_node("ReduceSum", ["x"], ["x_sum"], keepdims=0))
    model.graph.initializer.append(_const("zero_f", np.array(0.0, np.float32)))
    with pytest.raises(
        OnnxflowError,
        match=r"node 'if' \(If\) runs a subgraph on 'c1', which carries the flow, with a",
    ):
        onnxflow.prune(model, sparsity=0.5, iterations=1)


def test_check_produced_names_the_node_that_reads_a_missing_tensor() -> None:
    graph = gs.import_onnx(inlined_model("computed"))
    relu = next(n for n in graph.nodes if n.op == "Relu")
    relu.outputs.clear()  # 'picked' loses its producer
    with pytest.raises(OnnxflowError, match=r"node 'use' \(Mul\) reads 'picked', which no node"):
        check_produced(graph)


# -- weights computed in the graph (weight standardization) ----------------------------------


def stdconv_model() -> onnx.ModelProto:
    """BiT's StdConv as the TorchScript exporter spells it: the conv's weight is
    (W - mean(W)) / sqrt(var(W) + eps), computed in the graph from the stored W."""
    nodes = [
        helper.make_node("Reshape", ["w1", "rows"], ["wr"]),
        helper.make_node("ReduceMean", ["wr"], ["mu"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["wr", "mu"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[1], keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["wn"]),
        helper.make_node("Reshape", ["wn", "wshape"], ["weff"], name="to_conv"),
        helper.make_node("Conv", ["x", "weff"], ["c1"], name="std_conv"),
        helper.make_node("Relu", ["c1"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2"),
    ]
    inits = [
        *_weights(),
        _const("rows", np.array([4, -1], np.int64)),
        _const("wshape", np.array([4, 3, 3, 3], np.int64)),
        _const("eps", np.array(1e-6, np.float32)),
    ]
    return _model(nodes, inits, [_out("y", [1, 4, 6, 6])])


def _standardized(w: np.ndarray) -> np.ndarray:
    rows = w.reshape(4, -1).astype(np.float64)
    d = rows - rows.mean(1, keepdims=True)
    return (d / np.sqrt((d * d).mean(1, keepdims=True) + 1e-6)).reshape(w.shape)


def test_computed_weight_is_left_dense_and_flows_through_its_effective_magnitude() -> None:
    model = stdconv_model()
    got = onnxflow.prune(model, sparsity=0.5, iterations=3)
    # Only the stored weight that a layer uses as it is can be pruned by masking.
    assert set(got.masks) == {"w2"}
    assert any("std_conv" in note and "left dense" in note for note in got.report.notes)
    assert got.report.to_dict()["notes"] == got.report.notes
    w1 = numpy_helper.to_array(model.graph.initializer[0])
    pruned_w1 = next(t for t in got.model.graph.initializer if t.name == "w1")
    np.testing.assert_array_equal(numpy_helper.to_array(pruned_w1), w1)  # untouched
    # Reference: the effective weight stored as a constant, excluded from pruning.
    ref_model = inlined_model("computed")
    ref_model.graph.initializer[0].CopyFrom(_const("w1", _standardized(w1).astype(np.float32)))
    ref = onnxflow.prune(ref_model, sparsity=0.5, iterations=3, exclude=("w1",))
    np.testing.assert_allclose(got.log_scores["w2"], ref.log_scores["w2"], rtol=1e-5)
    np.testing.assert_array_equal(got.masks["w2"], ref.masks["w2"])


def test_cli_prints_the_dense_layer_note(tmp_path, capsys) -> None:
    path = tmp_path / "std.onnx"
    onnx.save(stdconv_model(), path)
    assert main(["prune", str(path), "--sparsity", "0.5", "--iterations", "1"]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 layer with weights computed in the graph" in err
    assert "'std_conv'" in err
    assert main(["inspect", str(path)]) == 0
    assert "warning: 1 layer with weights computed in the graph" in capsys.readouterr().err


def test_timm_weight_standardization_export(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    layers = pytest.importorskip("timm.layers")
    net = torch.nn.Sequential(
        layers.StdConv2d(3, 8, 3, padding=0),
        torch.nn.ReLU(),
        layers.ScaledStdConv2d(8, 8, 3, padding=0),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 4),
    ).eval()
    path = tmp_path / "std.onnx"
    x = torch.rand(1, 3, 8, 8)
    torch.onnx.export(net, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"])
    got = onnxflow.prune(str(path), sparsity=0.5, iterations=2)
    assert len(got.masks) == 1  # the Linear; both standardized convs stay dense
    (note,) = got.report.notes
    assert note.startswith("2 layers with weights computed in the graph"), note


# -- detection post-processing: data-dependent selection -------------------------------------


def selection_model(with_selection: bool) -> onnx.ModelProto:
    """conv -> sigmoid scores -> TopK; the features at the chosen indices -> a Gemm, as
    RetinaNet gathers the box regressions of its best anchors and Faster R-CNN runs its box
    head on the chosen proposals. Without the selection, the scores' TopK values and the
    features are the outputs: what R is taken at once the selection is cut."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Sigmoid", ["c1"], ["s"], name="sig"),
        helper.make_node("Reshape", ["s", "flat"], ["scores"], name="flatten"),
        helper.make_node("TopK", ["scores", "k"], ["top", "idx"], name="topk", axis=1),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Reshape", ["c2", "flat"], ["feat"], name="flatten2"),
    ]
    inits = [
        *_weights(),
        _const("flat", np.array([1, -1], np.int64)),
        _const("k", np.array([5], np.int64)),
    ]
    if not with_selection:
        return _model(nodes, inits, [_out("top", [1, 5]), _out("feat", [1, 144])])
    nodes += [
        helper.make_node("Gather", ["feat", "idx"], ["picked"], name="pick", axis=1),
        helper.make_node("Reshape", ["picked", "flat"], ["p2"], name="flatten3"),
        helper.make_node("Gemm", ["p2", "wh"], ["y"], name="head"),
    ]
    inits.append(_const("wh", np.full((5, 3), 0.5, np.float32)))
    return _model(nodes, inits, [_out("top", [1, 5]), _out("y", [1, 3])])


def test_selection_is_cut_and_r_taken_at_what_it_reads() -> None:
    got = onnxflow.prune(selection_model(True), sparsity=0.5, iterations=2)
    want = onnxflow.prune(selection_model(False), sparsity=0.5, iterations=2)
    assert set(got.masks) == {"w1", "w2"}  # the head after the selection stays dense
    for name in want.log_scores:
        np.testing.assert_allclose(got.log_scores[name], want.log_scores[name], rtol=1e-6)
    (note,) = got.report.notes
    assert "3 nodes that use what node 'topk' (TopK) selects" in note, note
    assert "'head'" in note and "1 tensors they read" in note
    assert [n.name for n in got.model.graph.node][-3:] == ["pick", "flatten3", "head"]


def test_control_flow_reading_the_selection_implicitly_is_cut() -> None:
    """Mask R-CNN pastes its masks in a Loop whose body reads the mask head's output by name
    (not as a Loop input): it is after the selection, so it is cut, not refused."""
    model = selection_model(True)
    then = _branch("then", [helper.make_node("Identity", ["p2"], ["t"])], "t")
    other = _branch("else", [helper.make_node("Neg", ["p2"], ["e"])], "e")
    model.graph.node.extend(
        [
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0, name="total"),
            helper.make_node("Greater", ["total", "zero_f"], ["cond"], name="positive"),
            helper.make_node(
                "If", ["cond"], ["z"], name="paste", then_branch=then, else_branch=other
            ),
        ]
    )
    model.graph.initializer.append(_const("zero_f", np.array(0.0, np.float32)))
    model.graph.output.append(_out("z", [1, 5]))
    got = onnxflow.prune(model, sparsity=0.5, iterations=2)
    assert set(got.masks) == {"w1", "w2"}
    assert got.report.notes[0].startswith("4 nodes that use what node 'topk'")


def test_topk_values_and_argmax_labels_are_not_cut() -> None:
    """TopK's values pass the flow (a head on them is pruned); an ArgMax label ends it."""
    model = selection_model(False)
    model.graph.node.append(helper.make_node("Gemm", ["top", "wh"], ["y"], name="head"))
    model.graph.node.append(helper.make_node("ArgMax", ["feat"], ["label"], axis=1))
    model.graph.initializer.append(_const("wh", np.full((5, 3), 0.5, np.float32)))
    model.graph.output.append(_out("y", [1, 3]))
    model.graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, [1, 1]))
    got = onnxflow.prune(model, sparsity=0.5, iterations=2)
    assert set(got.masks) == {"w1", "w2", "wh"} and got.report.notes == []


def test_selection_of_ids_is_not_cut() -> None:
    """An argmax over token ids (CLIP's text pooling) does not depend on a flow."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5])
    nodes = [
        helper.make_node("ArgMax", ["ids"], ["last"], axis=1, keepdims=0),
        helper.make_node("Gather", ["table", "ids"], ["e"]),
        helper.make_node("MatMul", ["e", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [ids],
        [_out("y", [1, 5, 2]), helper.make_tensor_value_info("last", TensorProto.INT64, [1])],
        [_const("table", np.ones((10, 4), np.float32)), _const("w", np.ones((4, 2), np.float32))],
    )
    g = gs.import_onnx(helper.make_model(graph))
    g.tensors()["e"].dtype = np.float32
    assert cut_selection(g, {"table", "w"}) is None
    assert len(g.nodes) == 3


# -- external data entries without `length` (TorchScript's > 2 GB exports) -------------------


def external_without_length(folder: Path) -> Path:
    """The weights in one file each, their entries without `length`, as the TorchScript
    exporter writes models over 2 GB."""
    model = _model(
        [
            helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
            helper.make_node("Conv", ["c1", "w2"], ["y"], name="conv2"),
        ],
        _weights(),
        [_out("y", [1, 4, 6, 6])],
    )
    for t in model.graph.initializer:
        (folder / t.name).write_bytes(t.raw_data)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=t.name)
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_tensor_sizes_come_from_shape_and_type_without_length(tmp_path) -> None:
    path = external_without_length(tmp_path)
    model = onnx.load(path, load_external_data=False)
    sizes = {t.name: external_nbytes(t) for t in model.graph.initializer}
    assert sizes == {"w1": 4 * 3 * 3 * 3 * 4, "w2": 4 * 4 * 4}
    assert onnxflow.external.external_bytes(model) == 432 + 64
    w1 = model.graph.initializer[0]
    np.testing.assert_array_equal(read_external(w1, tmp_path), numpy_helper.to_array(_weights()[0]))
    # A threshold between the two sizes leaves only the larger tensor in its file.
    assert load_small(model, tmp_path, lazy_bytes=100)
    lazy = {t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert lazy == {"w1"}


def test_external_model_without_length_loads_lazily_and_prunes(tmp_path, monkeypatch) -> None:
    """Before, every tensor counted as 0 bytes: all were loaded, and a 2.58 GB model then
    failed to serialize. With a threshold of 100 bytes, w1 (432 bytes) must stay lazy."""
    monkeypatch.setattr(onnxflow.external, "LAZY_BYTES", 100)
    path = external_without_length(tmp_path)
    model, external = load_model(path)
    assert external
    lazy = {t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert lazy == {"w1"}
    out = tmp_path / "pruned.onnx"
    assert (
        main(["prune", str(path), "--sparsity", "0.5", "--iterations", "2", "-q", "-o", str(out)])
        == 0
    )
    ref = onnxflow.prune(onnx.load(path), sparsity=0.5, iterations=2)
    pruned = onnx.load(out)
    for t in pruned.graph.initializer:
        np.testing.assert_array_equal(
            numpy_helper.to_array(t),
            numpy_helper.to_array(next(r for r in ref.model.graph.initializer if r.name == t.name)),
        )


# -- onnxruntime's own log lines -------------------------------------------------------------


def unsqueeze_warning_model() -> onnx.ModelProto:
    """Shape -> Gather -> Unsqueeze -> Concat -> Expand, as PyTorch exports an LSTM's initial
    state: constant folding's onnxruntime session logs `unsqueeze_elimination.cc ... cannot
    remove node` for it at warning level."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv"),
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "i0"], ["g"], name="gather"),
        helper.make_node("Unsqueeze", ["g", "ax"], ["u"], name="unsq"),
        helper.make_node("Concat", ["u", "rest"], ["shape4"], axis=0, name="cat"),
        helper.make_node("Expand", ["one", "shape4"], ["e"], name="expand"),
        helper.make_node("Add", ["c", "e"], ["y"], name="add"),
    ]
    inits = [
        _weights()[0],
        _const("i0", np.array(0, np.int64)),
        _const("ax", np.array([0], np.int64)),
        _const("rest", np.array([4, 1, 1], np.int64)),
        _const("one", np.ones((1,), np.float32)),
    ]
    return _model(nodes, inits, [_out("y", [1, 4, 6, 6])])


@pytest.mark.parametrize("command", ["prune", "inspect"])
def test_onnxruntime_log_lines_never_reach_the_terminal(tmp_path, command) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(unsqueeze_warning_model(), path)
    argv = [str(path)] + (["--sparsity", "0.5", "-q"] if command == "prune" else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "onnxflow.cli", command, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime" not in proc.stderr, proc.stderr
    assert "[W:" not in proc.stderr + proc.stdout
