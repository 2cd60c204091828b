"""Export tiny torchvision models whose libraries zero-initialize parameters (needs torch,
torchvision; onnxscript for dynamo). Random weights, as each library initializes them.

    python tests/exported/make_zero_init_models.py

- `zero_init_resnet_folded.onnx`: a narrow torchvision ResNet (Bottleneck, one block per
  stage, planes / 16) built with `zero_init_residual=True`, TorchScript exporter with
  constant folding: each bn3's zero scale is folded into conv3, whose weight is all zero.
- `zero_init_resnet_bn.onnx`: the same model through the TorchScript exporter without
  folding: the BatchNormalization nodes stay, with scale 0. (The dynamo exporter folds
  BatchNormalization into the convolutions, like the first file.)
- `zero_init_vit.onnx`: torchvision's VisionTransformer (image 32, patch 8, 2 layers,
  2 heads, width 32, MLP 64, 10 classes), whose classification head is all zero.

The .onnx files are committed so tests/test_zero_init.py needs no framework.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.models.vision_transformer import VisionTransformer

HERE = Path(__file__).resolve().parent


class NarrowResNet(ResNet):
    """torchvision's ResNet with every stage's planes divided by 16 (4, 8, 16, 32)."""

    def __init__(self) -> None:
        super().__init__(Bottleneck, [1, 1, 1, 1], num_classes=10, zero_init_residual=True)
        self.fc = nn.Linear(32 * Bottleneck.expansion, 10)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):  # type: ignore[no-untyped-def]
        return super()._make_layer(block, planes // 16, blocks, stride, dilate)


def _randomize_bn_statistics(model: nn.Module) -> None:
    """Non-trivial running statistics (the scales stay as the library set them)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)


def _save(path: Path) -> None:
    model = onnx.load(path)
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    print(f"wrote {path.relative_to(HERE.parent.parent)} ({path.stat().st_size / 1024:.0f} KiB)")


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    resnet = NarrowResNet().eval()
    _randomize_bn_statistics(resnet)
    assert all(not b.bn3.weight.any() for b in resnet.modules() if isinstance(b, Bottleneck))
    # 64x64: at 32x32 layer4's strided 3x3 conv sees a 2x2 input, and its taps that only
    # ever meet padding score 0 correctly; at 64x64 every tap reads the input.
    x = torch.ones(1, 3, 64, 64)
    path = HERE / "zero_init_resnet_folded.onnx"
    torch.onnx.export(
        resnet,
        (x,),
        path,
        dynamo=False,
        opset_version=17,
        do_constant_folding=True,
        input_names=["input"],
        output_names=["logits"],
    )
    _save(path)
    path = HERE / "zero_init_resnet_bn.onnx"
    torch.onnx.export(
        resnet,
        (x,),
        path,
        dynamo=False,
        opset_version=17,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
        input_names=["input"],
        output_names=["logits"],
    )
    _save(path)

    torch.manual_seed(1)
    vit = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    ).eval()  # fmt: skip
    assert not vit.heads.head.weight.any()
    path = HERE / "zero_init_vit.onnx"
    torch.onnx.export(
        vit,
        (torch.ones(1, 3, 32, 32),),
        path,
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
    )
    _save(path)


if __name__ == "__main__":
    main()
