"""Iterative SynFlow reaches maximal critical compression (Tanaka et al. 2020, figure 1).

VGG-16-BN with a 100-class head (14.7M prunable weights in 14 layers, N/L ~ 10^6.02),
pruned to 10^6 in 100 iterations, keeps at least one weight in every layer and a path from
input to output. BatchNorm statistics are non-trivial, which is what broke the official code.
Random and magnitude pruning collapse near 10^3: see benchmarks/critical_compression.py.
"""

from __future__ import annotations

import math

import netgen
import numpy as np
import pytest

import onnxflow


@pytest.mark.slow
def test_vgg16_bn_pruned_to_one_millionth_stays_connected() -> None:
    model = netgen.vgg("vgg16", batch_norm=True, num_classes=100)
    result = onnxflow.prune(model, compression=6, iterations=100)
    report = result.report
    assert len(report.layers) == 14
    assert math.log10(report.params / len(report.layers)) > 6.0
    assert report.kept == round(report.params * 1e-6)
    assert report.emptied == []
    # R > 0 on the pruned network <=> some input-output path survives.
    assert np.isfinite(onnxflow.score(result.model).log_flow)
