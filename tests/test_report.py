"""Report figures: FLOPs per layer and in total, file sizes, emptied layers."""

from __future__ import annotations

import json

import netgen
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxflow
from onnxflow.cli import main


def conv_gemm() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(5, 256)).astype(np.float32), "fc"),
        numpy_helper.from_array(np.array([2, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def test_flops_count_every_use_of_every_weight() -> None:
    report = onnxflow.prune(conv_gemm(), sparsity=0.5, iterations=2).report
    conv, fc = report.layers
    assert conv.uses == 2 * 8 * 8 and conv.flops == 2 * 108 * 128  # batch 2, 8x8 outputs
    assert fc.uses == 2 and fc.flops == 2 * 5 * 256 * 2
    assert conv.flops_kept == 2 * conv.kept * conv.uses
    assert report.flops == conv.flops + fc.flops
    assert report.flops_kept < report.flops


def test_resnet20_dense_flops_match_the_architecture() -> None:
    # CIFAR ResNet-20: about 40.6M multiply-accumulates in its convolutions and head.
    report = onnxflow.prune(netgen.cifar_resnet(20), sparsity=0.0, iterations=1).report
    assert 2 * 40.0e6 < report.flops < 2 * 41.5e6


def test_report_json_totals(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(conv_gemm(), path)
    assert (
        main(
            [
                "prune",
                str(path),
                "--sparsity",
                "0.5",
                "--iterations",
                "2",
                "-q",
                "--report",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "r.json").read_text())
    totals = data["totals"]
    assert totals["flops"] == sum(layer["flops"] for layer in data["layers"])
    assert totals["flops_kept"] == sum(layer["flops_kept"] for layer in data["layers"])
    assert totals["bytes_before"] == path.stat().st_size
    assert totals["bytes_after"] == (tmp_path / "m.pruned.onnx").stat().st_size
