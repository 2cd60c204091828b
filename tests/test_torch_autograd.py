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


class _GapNet(torch.nn.Module):
    """DenseNet-like: a stem feature concatenated with the output of a deep branch whose
    weights are 1e-7 times smaller, so the Concat joins flows ~120 nats apart; after it a
    BatchNorm, a depthwise conv, a 1x1 conv, pooling, a 3x3 conv and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.deep = nn.Sequential(
            *[
                m
                for _ in range(10)
                for m in (nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            ]
        )
        with torch.no_grad():
            for m in self.deep:
                if isinstance(m, nn.Conv2d):
                    m.weight.mul_(1e-7)
        self.norm = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.pw = nn.Conv2d(16, 8, 1)
        self.pool = nn.AvgPool2d(2)
        self.conv = nn.Conv2d(8, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        s = self.stem(x)
        z = torch.cat([s, self.deep(s)], 1)
        z = self.pw(self.dw(torch.relu(self.norm(z))))
        return self.head(torch.flatten(self.conv(self.pool(z)), 1))


def test_concat_of_flows_far_apart_matches_float64_autograd(tmp_path) -> None:
    torch.manual_seed(0)
    model = ref._randomize(_GapNet())
    want, _ = compare(model, (1, 3, 8, 8), tmp_path)
    spread = want["pw.weight"][np.isfinite(want["pw.weight"])]
    assert np.ptp(spread) > 110  # float32 holds down to e^-103 below a unit of 1


@pytest.mark.slow
def test_vgg16_bn_at_one_millionth_keeps_every_layer(tmp_path) -> None:
    """Issue 10, item 5: this VGG-16-BN (100 classes, random BatchNorm statistics, seed 0)
    lost 9 of its 14 layers and all flow at 10^6 before steps were refined."""
    path = tmp_path / "vgg16_bn.onnx"
    ref.export_onnx(ref.vgg("vgg16", num_classes=100, seed=0), (1, 3, 32, 32), path)
    result = onnxflow.prune(path, compression=6, keep_scores=False)
    assert result.report.kept == round(result.report.params * 1e-6)
    assert result.report.emptied == []
    assert np.isfinite(onnxflow.score(result.model).log_flow)
