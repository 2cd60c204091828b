"""Scores against live PyTorch float64 autograd, on the models too large to commit.

Skipped where PyTorch is missing; the same property is covered without it by the committed
golden files (test_scores.py) and by the conservation-law tests.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as ref  # noqa: E402

import onnxflow  # noqa: E402


def compare(model, input_shape, tmp_path) -> tuple[dict, float]:
    path = tmp_path / "model.onnx"
    ref.export_onnx(model, input_shape, path)
    want = ref.synflow_log_scores(model, input_shape)
    log_r = float(want.pop(ref.LOG_R_KEY))
    got = onnxflow.score(path)
    assert set(got.log_scores) == set(want)
    for key, w in want.items():
        g = got.log_scores[key]
        np.testing.assert_array_equal(np.isneginf(g), np.isneginf(w), err_msg=key)
        finite = np.isfinite(w)
        np.testing.assert_allclose(g[finite], w[finite], rtol=0, atol=1e-4, err_msg=key)
    assert got.log_flow == pytest.approx(log_r, abs=1e-4)
    return want, log_r


def test_resnet50_at_224_matches_float64_autograd_where_float32_fails(tmp_path) -> None:
    model = ref.resnet50()
    _, log_r = compare(model, (1, 3, 224, 224), tmp_path)
    assert log_r > math.log(np.finfo(np.float32).max)
    # The official code's float32 autograd cannot represent this R: its scores break down.
    net, _ = ref._synflow_network(model)
    with torch.no_grad():
        r = net.float()(torch.ones(1, 3, 224, 224)).sum()
    assert not torch.isfinite(r)


def test_full_vgg16_bn_matches_float64_autograd(tmp_path) -> None:
    compare(ref.vgg("vgg16", batch_norm=True, num_classes=100), (1, 3, 32, 32), tmp_path)
