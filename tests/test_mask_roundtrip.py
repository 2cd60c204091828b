"""Carrying masks back to training: PyTorch parameter names survive the export, so the masks
apply with torch.nn.utils.prune.custom_from_mask (docs/masks.md). Skipped without PyTorch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
torch_prune = pytest.importorskip("torch.nn.utils.prune")

import torch_reference as ref  # noqa: E402

import onnxflow  # noqa: E402


def test_masks_applied_in_torch_reproduce_the_pruned_onnx_model(tmp_path) -> None:
    model = ref.resnet20().eval()
    path = tmp_path / "r20.onnx"
    ref.export_onnx(model, (1, 3, 32, 32), path)
    result = onnxflow.prune(path, sparsity=0.95, iterations=20)
    onnxflow.save(result, tmp_path / "r20.pruned.onnx", masks=tmp_path / "masks.npz")

    modules = dict(model.named_modules())
    with np.load(tmp_path / "masks.npz") as masks:
        assert masks.files
        for name in masks.files:
            module_name, param = name.rsplit(".", 1)
            torch_prune.custom_from_mask(modules[module_name], param, torch.from_numpy(masks[name]))

    x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(
        str(tmp_path / "r20.pruned.onnx"), providers=["CPUExecutionProvider"]
    )
    got = sess.run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
