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
