"""Real exporter output prunes: PyTorch TorchScript (folded and not), dynamo, a transformer,
and a model with 1-D/3-D convs, ConvTranspose, Upsample, Pad, Split and Slice.

The models are committed (tests/exported/make_torch_models.py writes them), so no framework
is needed. Each must prune to the exact density, zero exactly the masked entries, leave
every other constant alone, run with the original's output shapes, and give every weight
on an input-output path a positive dense score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxflow
from onnxflow.tensors import read_stored

HERE = Path(__file__).resolve().parent / "exported"
MODELS = sorted(p.name for p in HERE.glob("*.onnx"))


def feeds(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for vi in model.graph.input:
        if vi.name in {t.name for t in model.graph.initializer}:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.integer):
            out[vi.name] = rng.integers(0, 8, shape).astype(dtype)
        else:
            out[vi.name] = rng.normal(size=shape).astype(dtype)
    return out


def run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)


def shape_of(value: object) -> tuple:
    """An array's shape; a ZipMap output (a list of dicts) by its length."""
    return value.shape if isinstance(value, np.ndarray) else ("sequence", len(value))


def constants(model: onnx.ModelProto) -> dict[str, bytes]:
    found = {t.name: t.SerializeToString() for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            found[node.output[0]] = node.SerializeToString()
    return found


def test_all_exports_are_present() -> None:
    assert set(MODELS) >= {
        "torchscript_folded_cnn.onnx",
        "torchscript_cnn.onnx",
        "dynamo_cnn.onnx",
        "transformer.onnx",
        "updown.onnx",
    }


# Scores that float32 loses at a join beyond its range, which the run reports (the selective
# scan unrolled over the tokens: docs/flow_rules.md, "Scale safety").
REPORTED_INEXACT = {"hf_mamba_tiny.onnx"}


@pytest.mark.parametrize("name", MODELS)
def test_exported_model_prunes_and_deploys(name: str, caplog) -> None:
    model = onnx.load(HERE / name)
    with caplog.at_level("WARNING", logger="onnxflow.api"):
        dense = onnxflow.score(model)
    inexact = [r for r in caplog.records if "scores may be inexact" in r.getMessage()]
    assert bool(inexact) == (name in REPORTED_INEXACT)
    stored = {layer.name: read_stored(model, layer.name) for layer in dense.dag.layers}
    for layer in dense.dag.layers:
        on_path = stored[layer.name] != 0
        if name not in REPORTED_INEXACT:
            assert np.isfinite(dense.log_scores[layer.name][on_path]).all(), layer.name

    result = onnxflow.prune(model, sparsity=0.8, iterations=10)
    total = sum(w.size for w in stored.values())
    assert result.report.kept == round(0.2 * total)
    for layer_name, mask in result.masks.items():
        pruned = read_stored(result.model, layer_name)
        assert pruned.dtype == stored[layer_name].dtype
        np.testing.assert_array_equal(pruned[~mask], 0)
        np.testing.assert_array_equal(pruned[mask], stored[layer_name][mask])
    before, after = constants(model), constants(result.model)
    for key in before.keys() - result.masks.keys() - dense.dag.copies.keys():
        assert before[key] == after[key], key
    for copy, (layer_name, perm) in dense.dag.copies.items():  # a tied table's stored copy
        np.testing.assert_array_equal(
            read_stored(result.model, copy), read_stored(result.model, layer_name).transpose(perm)
        )

    rng = np.random.default_rng(0)
    inputs = feeds(model, rng)
    want = run(model, inputs)
    got = run(result.model, inputs)
    assert [shape_of(g) for g in got] == [shape_of(w) for w in want]
    assert all(
        np.isfinite(g).all() for g in got if isinstance(g, np.ndarray) and g.dtype.kind == "f"
    )


def test_folded_batchnorm_weights_keep_their_exporter_names() -> None:
    dag = onnxflow.score(HERE / "torchscript_folded_cnn.onnx").dag
    assert any(layer.name.startswith("onnx::Conv_") for layer in dag.layers)


def test_transformer_embedding_is_where_flow_enters() -> None:
    model = onnx.load(HERE / "transformer.onnx")
    dense = onnxflow.score(model)
    ops = {layer.op for layer in dense.dag.layers}
    assert "MatMul" in ops or "Gemm" in ops
    assert np.isfinite(dense.log_flow)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert not any(layer.name == "embed.weight" for layer in dense.dag.layers)
    assert "embed.weight" in weights  # an embedding table is not a prunable weight
