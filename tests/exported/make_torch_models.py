"""Export the small PyTorch models in this folder (needs torch; onnxscript for dynamo).

    python tests/exported/make_torch_models.py

Each model covers one kind of exporter output that onnxflow must prune; the .onnx files are
committed so the tests need no framework.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

HERE = Path(__file__).resolve().parent


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks with a residual add, global pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, groups=2),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8),
            nn.BatchNorm2d(8),
        )
        self.down = nn.Conv2d(8, 16, 1, stride=2)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = self.down(x).mean(dim=(2, 3))
        return torch.softmax(self.head(x), dim=-1)


class TinyTransformer(nn.Module):
    """Token embedding, two pre-norm encoder layers (attention, GELU MLP), mean-pool head."""

    def __init__(self, vocab: int = 50, dim: int = 16, heads: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, 8, dim) * 0.1)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=32,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.embed(tokens) + self.pos)
        return self.head(self.norm(x).mean(dim=1))


class UpDown(nn.Module):
    """1-D and 3-D convs, ConvTranspose, Upsample (Resize), Pad, Concat, Slice, Split."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(4, 6, 3, padding=1)
        self.conv3d = nn.Conv3d(2, 4, 3, padding=1)
        self.enc = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dec = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.mix = nn.Conv2d(4 + 8, 4, 3)

    def forward(self, img: torch.Tensor, seq: torch.Tensor, vol: torch.Tensor):
        e = torch.relu(self.enc(img))
        d = self.dec(e)
        u = self.up(e)
        y = self.mix(nn.functional.pad(torch.cat([d, u], dim=1), (1, 1, 1, 1)))
        a, b = torch.split(y, 2, dim=1)
        s = self.conv1d(seq)[:, :, 1:-1]
        v = self.conv3d(vol)
        return a * 2 + b, s, v


def _randomize_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_(1, 0.3)
            m.bias.data.normal_(0, 0.3)


def _save(path: Path) -> None:
    model = onnx.load(path)
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    print(f"wrote {path.relative_to(HERE.parent.parent)} ({path.stat().st_size / 1024:.0f} KiB)")


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    cnn = SmallCNN().eval()
    _randomize_bn(cnn)
    x = torch.ones(1, 3, 16, 16)
    # TorchScript exporter with constant folding: BN folded into conv weights (onnx::Conv_*).
    path = HERE / "torchscript_folded_cnn.onnx"
    torch.onnx.export(
        cnn,
        (x,),
        path,
        dynamo=False,
        opset_version=13,
        do_constant_folding=True,
        input_names=["input"],
        output_names=["probs"],
        dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"}},
    )
    _save(path)
    # The same without folding: BatchNormalization nodes and parameter names kept.
    path = HERE / "torchscript_cnn.onnx"
    torch.onnx.export(
        cnn,
        (x,),
        path,
        dynamo=False,
        opset_version=17,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
        input_names=["input"],
        output_names=["probs"],
    )
    _save(path)
    # The dynamo exporter (opset 18+, ReduceMean with axes as an input).
    path = HERE / "dynamo_cnn.onnx"
    torch.onnx.export(
        cnn,
        (x,),
        path,
        dynamo=True,
        opset_version=18,
        input_names=["input"],
        output_names=["probs"],
        external_data=False,
    )
    _save(path)

    torch.manual_seed(1)
    tr = TinyTransformer().eval()
    tokens = torch.randint(0, 50, (1, 8))
    path = HERE / "transformer.onnx"
    torch.onnx.export(
        tr,
        (tokens,),
        path,
        dynamo=False,
        opset_version=17,
        input_names=["tokens"],
        output_names=["logits"],
    )
    _save(path)

    torch.manual_seed(2)
    ud = UpDown().eval()
    args = (torch.ones(1, 3, 16, 16), torch.ones(1, 4, 10), torch.ones(1, 2, 4, 4, 4))
    path = HERE / "updown.onnx"
    torch.onnx.export(
        ud,
        args,
        path,
        dynamo=False,
        opset_version=17,
        input_names=["img", "seq", "vol"],
        output_names=["y", "s", "v"],
    )
    _save(path)


if __name__ == "__main__":
    main()
