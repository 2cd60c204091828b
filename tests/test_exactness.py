"""No weight whose exact score is positive scores 0, on every committed and generated model.

The oracle is the same flow model run in float64 by onnx's reference evaluator
(tests/float64_flow.py): 7x the exponent range of float32, so a score that float32 loses
to underflow (at a Concat of flows far apart, a dead branch at a sum...) is positive there.
Weights that score 0 in both are truly blocked (they only see padding, or a strided conv
never reads them): a zero in float64 is a zero of R's gradient, not a rounding.
"""

from __future__ import annotations

from pathlib import Path

import netgen
import numpy as np
import onnx
import pytest
from float64_flow import float64_log_scores
from test_concat_units import cnn_concat_pool, cnn_with_gap, mlp_with_gap

from onnxflow.analyze import analyze
from onnxflow.flow.engine import FlowEngine

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = sorted(
    p.relative_to(ROOT).as_posix()
    for p in [*(ROOT / "tests").rglob("*.onnx"), *(ROOT / "models").rglob("*.onnx")]
)
SLOW = {"models/resnet20.onnx"}  # ~25 s in the reference evaluator
GENERATED = {
    "mlp_concat_gap": lambda: mlp_with_gap()[0],
    "cnn_concat_gap": lambda: cnn_with_gap()[0],
    # DenseNet's classifier reads the last Concat through a global pool: TorchScript writes
    # GlobalAveragePool + Flatten, dynamo ReduceMean + Reshape (keepdims 1; 0 also tested).
    "cnn_concat_globalaveragepool": lambda: cnn_concat_pool("GlobalAveragePool"),
    "cnn_concat_reducemean": lambda: cnn_concat_pool("ReduceMean"),
    "cnn_concat_reducemean_keepdims0": lambda: cnn_concat_pool("ReduceMean0"),
    "resnet50_narrow": lambda: netgen.resnet(50, input_hw=32, width=4, num_classes=10),
    "vgg16_bn": lambda: netgen.vgg("vgg16", batch_norm=True, width_div=16),
}


def engine_of(model: str | onnx.ModelProto) -> FlowEngine:
    analysis = analyze(model)
    return FlowEngine(analysis.graph, analysis.dag, "cpu")


def assert_no_positive_score_lost(engine: FlowEngine) -> None:
    """No positive score comes out as 0 unless the run says its scores may be inexact (a
    join beyond float32, `FlowScores.lossy_joins`: a recurrence unrolled over a sequence,
    hf_mamba_tiny): a loss is never silent."""
    run = engine.run()
    got = run.log()
    want = float64_log_scores(engine)
    assert set(got) == set(want)
    lost = {name: int((np.isneginf(got[name]) & np.isfinite(want[name])).sum()) for name in got}
    if run.lossy_joins:
        return
    for name, n in lost.items():
        assert n == 0, f"{name}: {n} positive scores came out as 0"


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p for p in COMMITTED],
)
def test_committed_model_loses_no_positive_score(path: str) -> None:
    assert_no_positive_score_lost(engine_of(str(ROOT / path)))


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_model_loses_no_positive_score(name: str) -> None:
    assert_no_positive_score_lost(engine_of(GENERATED[name]()))


def test_the_oracle_sees_what_float32_loses() -> None:
    """The check can fail: merged to one float32 unit, a Concat of flows ~200 nats apart
    loses the smaller side, and the oracle finds it."""
    engine = engine_of(mlp_with_gap()[0])
    got = engine.run().log()
    want = float64_log_scores(engine)
    # The oracle itself keeps every score of the layer after the Concat...
    assert np.isfinite(want["f"]).all()
    # ...and float32 would lose the small side if it held them in one unit.
    in_one_unit = want["f"] - want["f"].max()
    assert (in_one_unit < np.log(np.finfo(np.float32).smallest_subnormal)).any()
    assert np.isfinite(got["f"]).all()
