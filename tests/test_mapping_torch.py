"""map_masks on real PyTorch exports: TorchScript and dynamo exports of a CNN and of a
transformer encoder, whose initializers carry invented names (`val_0`, `onnx::MatMul_171`)
and transposed weights. Applying the mapped masks with torch.nn.utils.prune reproduces the
pruned ONNX model's outputs. Skipped without PyTorch (tests/test_mapping.py covers the
mapping itself without it)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
torch_prune = pytest.importorskip("torch.nn.utils.prune")
nn = torch.nn

import onnxflow  # noqa: E402


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x)).mean(dim=(2, 3))
        return self.fc(x)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


MODELS = {"cnn": (CNN, (1, 3, 8, 8)), "encoder": (Encoder, (1, 6, 16))}


def export(model: nn.Module, shape: tuple[int, ...], path, dynamo: bool) -> None:
    x = torch.randn(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            # Its optimizer would fold BatchNorm into conv1.weight, keeping the name (see the
            # last test); without it, the encoder keeps CastLike nodes that lack a flow rule.
            has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
            torch.onnx.export(
                model, (x,), str(path), dynamo=True, optimize=not has_bn, verbose=False
            )
        else:
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                opset_version=17,
                # BatchNorm stays a node: folded into the conv, the weights have no
                # parameter holding their values.
                training=torch.onnx.TrainingMode.PRESERVE,
                do_constant_folding=False,
            )
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, 10)
    onnx.save(proto, str(path))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_mapped_masks_in_torch_reproduce_the_pruned_onnx_model(tmp_path, kind, dynamo) -> None:
    if dynamo:
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    cls, shape = MODELS[kind]
    model = cls().eval()
    path = tmp_path / f"{kind}.onnx"
    export(model, shape, path, dynamo)
    result = onnxflow.prune(path, sparsity=0.8, iterations=5)
    mapped = onnxflow.map_masks(result.masks, path, model.state_dict())
    # nn.TransformerEncoder deep-copies its layer: both layers hold equal weights, which the
    # exporters store once; that one mask then serves both layers' parameters.
    params = model.state_dict()
    assert len(mapped) >= len(result.masks)
    assert all(mapped[n].shape == params[n].shape for n in mapped)
    for name, mask in mapped.items():
        module_name, param = name.rsplit(".", 1)
        torch_prune.custom_from_mask(
            model.get_submodule(module_name), param, torch.from_numpy(mask)
        )
    onnx.save(result.model, str(tmp_path / "pruned.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "pruned.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # The masks matter: the dense model's output differs from the pruned one.
    dense = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert not np.allclose(dense.run(None, {sess.get_inputs()[0].name: x})[0], got, atol=1e-3)


def test_dynamo_export_with_batchnorm_folded_under_the_parameter_name_is_refused(tmp_path) -> None:
    """dynamo's optimizer folds BatchNorm into `conv1.weight` and keeps the name: trusting
    names would hand PyTorch a mask computed for other values; the values tell."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = CNN().eval()
    with torch.no_grad():
        model.bn1.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), str(path), dynamo=True, verbose=False)
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, 10)
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    result = onnxflow.prune(proto, sparsity=0.8, iterations=2)
    with pytest.raises(onnxflow.MaskMappingError, match=r"conv1\.weight.*other values") as err:
        onnxflow.map_masks(result.masks, proto, model.state_dict())
    assert err.value.unmatched == ["conv1.weight"]


def test_the_pytorch_loop_in_docs_masks_md_runs(tmp_path, monkeypatch) -> None:
    """The documented loop, executed as written (dynamo export, prune, map, apply)."""
    import re
    from pathlib import Path

    pytest.importorskip("onnxscript")
    doc = (Path(__file__).resolve().parent.parent / "docs" / "masks.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S)
    assert code is not None and "map_masks" in code.group(1)

    class MyNet(nn.Module):  # no BatchNorm: dynamo's optimizer would fold it (see the doc)
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    monkeypatch.chdir(tmp_path)
    scope = {"MyNet": MyNet, "example_input": torch.randn(1, 3, 8, 8)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code.group(1), "docs/masks.md", "exec"), scope)
    model, masks = scope["model"], scope["masks"]
    assert set(masks) == {"conv.weight", "fc.weight"}
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(0.01 * (8 * 3 * 9 + 8 * 4))  # sparsity 0.99 of 248 weights
    assert int((model.conv.weight != 0).sum()) == int(masks["conv.weight"].sum())
