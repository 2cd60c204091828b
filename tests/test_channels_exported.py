"""Real exports prune in channel mode (PyTorch TorchScript and dynamo, Keras/tf2onnx,
scikit-learn, model-zoo graphs, resnet20), and the compact model equals the original with
the masks applied. No framework needed: the models are committed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from test_exported import feeds, run

from onnxflow.channels.api import prune_channels
from onnxflow.errors import OnnxflowError
from onnxflow.options import PruneOptions
from onnxflow.passes.apply_masks import apply_masks

ROOT = Path(__file__).resolve().parent.parent
MODELS = [*sorted((ROOT / "tests" / "exported").glob("*.onnx")), ROOT / "models/resnet20.onnx"]
# Exports with no prunable channel group: every group reaches a graph output or a
# channel-mixing op. Channel mode refuses them with its one-line error, naming the reasons.
REFUSED = {
    "ops_normalize.onnx": "ReduceL2 over the channel axis",
    "ops_recurrent.onnx": "graph output",
    # the scan's products of two channel tensors (Mul) have no channel rule
    "hf_mamba_tiny.onnx": r"op without a channel rule \(Mul\)",
}


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_export_prunes_channels_and_stays_equivalent(path: Path) -> None:
    if path.name in REFUSED:
        with pytest.raises(
            OnnxflowError, match=r"no prunable channel group: .*" + REFUSED[path.name]
        ):
            prune_channels(path, PruneOptions(sparsity=0.5, iterations=3))
        return
    result = prune_channels(path, PruneOptions(sparsity=0.5, iterations=3))
    original = onnx.load(str(path))
    compact = result.model
    onnx.checker.check_model(compact, full_check=True)
    assert [o.name for o in compact.graph.output] == [o.name for o in original.graph.output]
    assert result.report.removed_share >= 0.5
    assert result.report.params_after < result.report.params_before
    inputs = feeds(original, np.random.default_rng(0))
    masked = apply_masks(original, result.masks)
    for a, b in zip(run(masked, inputs), run(compact, inputs), strict=True):
        if isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating):
            assert a.shape == b.shape
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * max(np.abs(a).max(), 1e-30))
        elif isinstance(a, np.ndarray):
            assert np.array_equal(a, b)


def test_transformer_prunes_feed_forward_units_only() -> None:
    result = prune_channels(
        ROOT / "tests/exported/transformer.onnx", PruneOptions(sparsity=0.5, iterations=3)
    )
    removed = [g for g in result.channels["groups"] if g["removed"]]  # type: ignore[index, union-attr]
    assert removed
    for g in removed:
        tensors = {m["tensor"] for m in g["members"]}
        assert any("linear1" in t for t in tensors)  # the hidden units' bias rides along


def _conv_reshape(channel_part: str) -> onnx.ModelProto:
    """Conv (4 -> 8 channels) -> Reshape to (batch, C, H*W) with the shape computed as a
    Concat, as exporters write `x.reshape(x.size(0), C, -1)`: C a stored literal
    (`channel_part="literal"`) or read from another tensor's shape ("shape": here the
    Conv's input, whose channels are not the ones cut) -> sum over H*W -> MatMul."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {
        "w": rng.normal(size=(8, 4, 3, 3)).astype(np.float32),
        "m": rng.normal(size=(8, 5)).astype(np.float32),
        "sum_ax": np.array([2], np.int64),
        "i0": np.array(0, np.int64),
        "ax": np.array([0], np.int64),
        "c": np.array([8], np.int64),
        "rest": np.array([-1], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Gather", ["xs", "i0"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
    ]
    if channel_part == "literal":
        parts = ["b1", "c", "rest"]
    else:  # 2 * x.size(1): 8, but from x's shape
        inits["i1"] = np.array(1, np.int64)
        inits["two"] = np.array(2, np.int64)
        nodes += [
            helper.make_node("Gather", ["xs", "i1"], ["cx"], axis=0),
            helper.make_node("Mul", ["cx", "two"], ["c2"]),
            helper.make_node("Unsqueeze", ["c2", "ax"], ["c1"]),
        ]
        parts = ["b1", "c1", "rest"]
    nodes += [
        helper.make_node("Concat", parts, ["shape"], axis=0),
        helper.make_node("Reshape", ["r", "shape"], ["flat"]),
        helper.make_node("ReduceSum", ["flat", "sum_ax"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("channel_part", ["literal", "shape"])
def test_a_computed_reshape_shape_is_rewritten_or_frozen(channel_part: str) -> None:
    """A channel count that the model stores inside a computed shape is rewritten; one it
    reads from another tensor's shape cannot follow the cut, so its channels stay (DPT's
    neck reshaped to a count read off its input: the compact model did not run)."""
    model = _conv_reshape(channel_part)
    if channel_part == "shape":
        with pytest.raises(OnnxflowError, match="Reshape to a channel count computed"):
            prune_channels(model, PruneOptions(sparsity=0.5, iterations=1))
        return
    result = prune_channels(model, PruneOptions(sparsity=0.5, iterations=1))
    assert result.report.max_relative_difference < 1e-5
    kept = next(t for t in result.model.graph.initializer if t.name == "w").dims[0]
    assert kept < 8
    (y,) = run(result.model, {"x": np.ones((1, 4, 4, 4), np.float32)})
    assert y.shape == (1, 5)
