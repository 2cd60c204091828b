"""FLOPs do not depend on how a weight is stored: a weight that reaches MatMul/Gemm through a
Transpose (TorchScript without constant folding) counts as the same layer stored as used."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxflow


def linear_model(transposed: bool, op: str = "MatMul") -> onnx.ModelProto:
    """x[1,16,8] @ W[8,4] -> y[1,16,4]; W stored as is, or stored as W^T [4,8] + Transpose."""
    w = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    if transposed:
        inits = [numpy_helper.from_array(w.T.copy(), "w_t")]
        nodes = [helper.make_node("Transpose", ["w_t"], ["w"], perm=[1, 0])]
    else:
        inits = [numpy_helper.from_array(w, "w")]
        nodes = []
    if op == "MatMul":
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["y"]))
        x_shape, y_shape = [1, 16, 8], [1, 16, 4]
    else:
        nodes.append(helper.make_node("Gemm", ["x", "w"], ["y"]))
        x_shape, y_shape = [16, 8], [16, 4]
    graph = helper.make_graph(
        nodes,
        "lin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_flops_equal_for_a_stored_and_a_transposed_weight(op: str) -> None:
    plain = onnxflow.prune(linear_model(False, op), sparsity=0.5, iterations=1).report
    trans = onnxflow.prune(linear_model(True, op), sparsity=0.5, iterations=1).report
    # 16 rows, each multiplying all 32 weights once: 16 uses, 2*32*16 FLOPs.
    assert [x.uses for x in plain.layers] == [16]
    assert [x.uses for x in trans.layers] == [16]
    assert trans.flops == plain.flops == 2 * 32 * 16


def test_flops_equal_on_folded_and_unfolded_torchscript_exports(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(x).mean(dim=1))

    torch.manual_seed(0)
    model = Encoder().eval()
    reports = []
    for folding in (True, False):
        path = tmp_path / f"enc_{folding}.onnx"
        torch.onnx.export(
            model, (torch.randn(1, 6, 16),), str(path), dynamo=False, opset_version=17,
            do_constant_folding=folding,
        )  # fmt: skip
        proto = onnx.load(str(path))
        proto.ir_version = min(proto.ir_version, 10)
        reports.append(onnxflow.prune(proto, sparsity=0.5, iterations=1).report)
    folded, unfolded = reports
    assert folded.params == unfolded.params
    assert sorted(x.uses for x in folded.layers) == sorted(x.uses for x in unfolded.layers)
    assert folded.flops == unfolded.flops
    # The two layers are deep copies, stored once: each weight of it is applied at the 6
    # token positions of both layers (12 uses); the head once, after the mean. Before the
    # fix the unfolded export counted 36, 24 and 6 uses (output size / stored last axis).
    assert sorted(x.uses for x in unfolded.layers) == [1, 12, 12, 12, 12]
