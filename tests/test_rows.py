"""The one presentation model of layer rows (onnxflow/rows.py) behind the prune table, the
inspect table, both JSON outputs and the plot."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

import onnxflow
from onnxflow.dag import WeightDag, WeightLayer
from onnxflow.inspect import inspect_model
from onnxflow.report import build_report
from onnxflow.rows import LayerRow, Totals, layer_rows


def two_layers() -> WeightDag:
    a = WeightLayer("a", "Conv", ["conv"], (4, 2, 3, 3), uses=64)
    b = WeightLayer("b", "MatMul", ["mm"], (8, 5), feeds_from=["a"], uses=1)
    return WeightDag([a, b])


def test_a_row_derives_density_and_flops_from_its_layer_and_count() -> None:
    row = LayerRow.of(two_layers().layers[0], 18)
    assert (row.params, row.kept, row.shape, row.nodes) == (72, 18, [4, 2, 3, 3], ["conv"])
    assert row.density == 0.25
    assert (row.flops, row.flops_kept) == (2 * 72 * 64, 2 * 18 * 64)
    empty = LayerRow("e", [], "Gemm", [0], 0, 0, 3)
    assert empty.density == 0.0 and empty.flops == 0


def test_totals_sum_the_rows_once_for_every_output() -> None:
    rows = layer_rows(two_layers().layers, {"a": 18, "b": 0})
    t = Totals.of(rows)
    assert (t.params, t.kept) == (72 + 40, 18)
    assert (t.flops, t.flops_kept) == (2 * 72 * 64 + 2 * 40, 2 * 18 * 64)
    assert t.density == 18 / 112
    assert t.compression == math.log10(112 / 18)
    assert Totals.of([]).density == 0.0 and Totals.of(rows[1:]).compression == math.inf


def test_report_and_inspect_json_are_two_views_of_the_same_row() -> None:
    dag = two_layers()
    masks = {"a": np.arange(72).reshape(4, 2, 3, 3) < 18, "b": np.zeros((8, 5), bool)}
    report = build_report(dag, masks, excluded=[WeightLayer("x", "Gemm", ["g"], (2, 3))])
    (a, b) = report.to_dict()["layers"]
    assert list(a) == [
        "name", "nodes", "op", "shape", "params", "kept", "uses", "density", "flops", "flops_kept"
    ]  # fmt: skip  # docs/report.md
    assert (a["kept"], a["density"], a["flops_kept"]) == (18, 0.25, 2 * 18 * 64)
    assert report.to_dict()["excluded_layers"] == [
        {"name": "x", "nodes": ["g"], "op": "Gemm", "shape": [2, 3], "params": 6, "kept": 6,
         "uses": 0}
    ]  # fmt: skip
    assert report.to_dict()["totals"]["kept"] == 18  # excluded layers are not counted
    view = LayerRow.of(dag.layers[1], 0).inspect_dict()
    assert view == {
        "name": "b", "op": "MatMul", "nodes": ["mm"], "shape": [8, 5], "params": 40,
        "nonzero": 0, "density": 0.0, "flops": 80, "flops_kept": 0, "feeds_from": ["a"],
    }  # fmt: skip
    assert {k: b[k] for k in ("params", "density", "flops", "flops_kept")} == {
        k: view[k] for k in ("params", "density", "flops", "flops_kept")
    }


def test_inspect_of_a_pruned_model_shows_the_rows_prune_reported() -> None:
    w = numpy_helper.from_array(np.arange(1, 25, dtype=np.float32).reshape(6, 4), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    result = onnxflow.prune(model, sparsity=0.5, iterations=2)
    inspection = inspect_model(result.model)
    assert inspection.rows == result.report.layers
    assert inspection.totals == result.report.totals
    assert inspection.to_dict()["layers"][0]["nonzero"] == result.report.kept == 12
