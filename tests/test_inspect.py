"""`onnxflow inspect`: the weight DAG, densities of a pruned model, ops without a flow rule.

The refusal of quantized weights is with the other bad inputs in test_errors.py."""

from __future__ import annotations

import json

import netgen
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxflow
from onnxflow.cli import main
from onnxflow.inspect import inspect_model


def test_inspect_lists_the_weight_dag(tmp_path, capsys) -> None:
    path = tmp_path / "r.onnx"
    onnx.save(netgen.cifar_resnet(20), path)
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    layers = {row["name"]: row for row in data["layers"]}
    assert len(layers) == 22 and data["missing_rules"] == []
    assert layers["conv1.weight"]["feeds_from"] == []
    # Identity shortcuts carry the stem and every block's output to the first projection.
    assert set(layers["layer2.0.downsample.0.weight"]["feeds_from"]) == {
        "conv1.weight",
        "layer1.0.conv2.weight",
        "layer1.1.conv2.weight",
        "layer1.2.conv2.weight",
    }
    assert layers["layer1.0.conv2.weight"]["feeds_from"] == ["layer1.0.conv1.weight"]
    assert all(row["density"] == 1.0 for row in data["layers"])
    assert main(["inspect", str(path)]) == 0
    assert "layer3.2.conv2.weight" in capsys.readouterr().out


def test_inspect_shows_the_density_of_a_pruned_model() -> None:
    pruned = onnxflow.prune(netgen.cifar_resnet(20), sparsity=0.9, iterations=5).model
    result = inspect_model(pruned)
    total = sum(result.nonzero.values())
    assert total == pytest.approx(0.1 * result.dag.size, abs=1)


def test_inspect_flags_ops_without_a_rule(tmp_path, capsys) -> None:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Round", ["c"], ["y"], name="round"),  # no rule: not differentiable
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["inspect", str(path)]) == 0
    assert "no flow rule for 'Round'" in capsys.readouterr().err
    assert main(["prune", str(path), "--sparsity", "0.5", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'Round'" in err and "'round'" in err
    assert not (tmp_path / "m.pruned.onnx").exists()
