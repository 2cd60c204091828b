"""Tiny exports of the real architectures the coverage sweep of 2026-11-29 found wrong
(tests/exported/make_sweep_models.py made them from timm and transformers; no torch here).

- NFNet: the last standardized convolution of each residual branch starts with gain 0, so
  its effective weight (computed in the graph) is all zero. Read as ones, the branch and its
  squeeze-excitation layers carry flow (they scored 0: 10.9M of NFNet-L0's 11.1M prunable
  weights). TorchScript stores the SE's zero bias once for the stem's too: channel mode
  cuts each as its own parameter.
- MViTv2: relative-position tables gathered by constant indices enter Einsums: fixed factors
  (the model was refused).
- Mamba: the selective scan, unrolled over the tokens, joins flows far beyond float32: the
  scores may be inexact, and the run says so; its zero initial state stays zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from float64_flow import float64_log_scores

import onnxflow
from onnxflow.analyze import analyze
from onnxflow.channels.api import prune_channels
from onnxflow.flow.engine import FlowEngine
from onnxflow.options import PruneOptions

HERE = Path(__file__).parent / "exported"


def test_nfnet_zero_gain_branches_carry_flow() -> None:
    path = HERE / "timm_nfnet_tiny.onnx"
    ones = onnxflow.prune(path, sparsity=0.5)
    strict = onnxflow.prune(path, sparsity=0.5, zero_init="strict")
    se = [n for n in ones.log_scores if "attn_last" in n]
    assert len(se) == 8  # fc1 and fc2 of the four blocks' squeeze-excitation
    for name, scores in ones.log_scores.items():
        assert np.isfinite(scores).all(), name
    for name in se:  # the paper's R: every branch is zero, so is every SE weight's score
        assert np.isneginf(strict.log_scores[name]).all(), name
    assert len(ones.report.zero_init.weights) == 4  # one per block: its conv3
    assert any("computed in the graph" in n for n in ones.report.notes)


def test_nfnet_channel_mode_cuts_a_shared_zero_bias_apart() -> None:
    path = HERE / "timm_nfnet_tiny.onnx"
    source = onnx.load(path)
    copies = {n.output[0]: n.input[0] for n in source.graph.node if n.op_type == "Identity"}
    assert copies.get("stages.0.0.attn_last.fc1.bias") == "stem.conv.bias"  # the premise
    result = prune_channels(path, PruneOptions(sparsity=0.5, iterations=3))
    assert result.report.max_relative_difference < 1e-5
    stored = {t.name: list(t.dims) for t in result.model.graph.initializer}
    for node in result.model.graph.node:  # a copy still written as one has its source's
        if node.op_type == "Identity" and node.input[0] in stored:
            stored[node.output[0]] = stored[node.input[0]]
    assert stored["stem.conv.bias"] == [8]  # the stem's weight is computed: it is not cut
    # every SE's hidden width is cut in its fc1 bias as in its fc1 weight, copy or not
    for node in result.model.graph.node:
        if node.op_type == "Conv" and "attn_last/fc1" in node.name:
            weight, bias = node.input[1], node.input[2]
            assert stored[bias] == [stored[weight][0]], node.name
    assert any(stored[n][0] < 16 for n in stored if n.endswith("fc1.weight"))  # some cut


def test_mvitv2_gathered_position_tables_are_fixed_factors() -> None:
    result = onnxflow.prune(HERE / "timm_mvitv2_tiny.onnx", sparsity=0.5)
    for name, scores in result.log_scores.items():
        assert np.isfinite(scores).all(), name
    assert any("Einsum nodes with a constant operand" in n for n in result.report.notes)


def test_mamba_scan_is_reported_inexact_and_its_state_stays_zero() -> None:
    path = HERE / "hf_mamba_tiny.onnx"
    result = onnxflow.prune(path, sparsity=0.5)
    (note,) = [n for n in result.report.notes if "scores may be inexact" in n]
    assert "mixer/Concat" in note
    assert not result.report.zero_init  # torch.zeros(...) of the scan is no layer scale
    # the note is no false alarm: float32 loses weights that the float64 flow model scores
    analysis = analyze(path)
    engine = FlowEngine(analysis.graph, analysis.dag, "cpu")
    scores = engine.run()
    reference = float64_log_scores(engine)
    lost = 0
    for name, values in scores.values.items():
        with np.errstate(divide="ignore"):
            ours = np.log(values.astype(np.float64)) + scores.units[name]
        lost += int((np.isneginf(ours) & np.isfinite(reference[name])).sum())
    assert lost > 1000


@pytest.mark.parametrize("name", ["timm_nfnet_tiny", "timm_mvitv2_tiny", "hf_mamba_tiny"])
def test_sweep_models_prune_and_run(name: str) -> None:
    """The pruned models run in onnxruntime with the original's output shape."""
    import onnxruntime as ort

    from onnxflow.runtime import ort_session

    path = HERE / f"{name}.onnx"
    result = onnxflow.prune(path, sparsity=0.9, iterations=5)
    session = ort_session(result.model.SerializeToString(), "cpu")
    (inp,) = session.get_inputs()
    shape = [int(d) for d in inp.shape]
    x = np.ones(shape, np.int64) if "int64" in inp.type else np.ones(shape, np.float32)
    (y,) = session.run(None, {inp.name: x})
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert y.shape == original.run(None, {inp.name: x})[0].shape
    assert np.isfinite(y).all()
