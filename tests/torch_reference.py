"""PyTorch reference models, ONNX exports and float64 SynFlow golden scores.

The onnxflow package computes SynFlow scores on ONNX graphs without PyTorch.
This module is the independent reference it is checked against: the same
networks written by hand in PyTorch, exported with the TorchScript exporter so
that parameter names survive as ONNX initializer names, and scored with plain
float64 autograd.

Conventions of the reference (the package must follow the same ones):

* SynFlow network: every Conv/Linear weight is replaced by ``abs(w)``, every
  Conv/Linear bias by 0; every BatchNorm keeps ``running_var`` and ``eps`` but
  gets ``weight -> abs(weight)``, ``bias -> 0``, ``running_mean -> 0``.  With
  all shifts removed the network is positively homogeneous in each layer,
  which is what makes the conservation law (layer score sum == R) hold.
* Input is ``ones(input_shape)`` (batch included), ``R = sum(model(x))``.
* Score of a weight is ``w * dR/dw``; scores are returned as natural logs
  (``-inf`` for exact zeros) because R overflows float32 on deep networks.
* MaxPool backward is PyTorch's: the whole gradient of a window goes to the
  first maximal element in row-major order.  With a constant input the
  interior of every feature map is constant, so ties are common; for the
  committed VGGs, routing to the last maximum or splitting evenly among ties
  changes no log-score by more than 4e-15, so any consistent rule matches.
* Exact zeros are real: in the VGGs the last 3x3 conv runs on a 2x2 map feeding
  a 2x2 max-pool, so 5 of its 9 taps only see padding where gradient arrives.

Run ``python tests/torch_reference.py`` to regenerate the committed files
(``tests/data/*.onnx``, ``tests/data/*.golden.npz``, ``models/resnet20.onnx``).
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

TESTS_DIR = Path(__file__).resolve().parent
DATA_DIR = TESTS_DIR / "data"
MODELS_DIR = TESTS_DIR.parent / "models"

LOG_R_KEY = "__log_R__"
SCORED_TYPES = (nn.Conv2d, nn.Linear)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)

VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ],
}


# --------------------------------------------------------------------------
# Model builders
# --------------------------------------------------------------------------


def _randomize(model: nn.Module) -> nn.Module:
    """Give BN non-trivial statistics and biases nonzero values, then eval().

    Default BN (mean 0, var 1, weight 1, bias 0) would let a buggy linearization
    pass unnoticed, and equal-valued tensors get merged by the exporter.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BN_TYPES):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
            elif isinstance(m, SCORED_TYPES) and m.bias is not None:
                m.bias.normal_(0.0, 0.1)
    return model.eval()


def _init_conv(model: nn.Module) -> None:
    """Kaiming fan-out init of convolutions, as torchvision and Synaptic-Flow do."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def mlp(seed: int = 0) -> nn.Module:
    """Small MLP for input (1, 64): 64 -> 128 -> 128 -> 10, ReLU, biases."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    return _randomize(model)


class VGG(nn.Module):
    """CIFAR VGG: 3x3 convs (bias, optional BN), five 2x2 max-pools, one Linear."""

    def __init__(
        self, cfg: list[int | str], batch_norm: bool, num_classes: int, width_div: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for spec in cfg:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out = int(spec) // width_div
            layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


def vgg(
    cfg_name: str = "vgg16",
    batch_norm: bool = True,
    num_classes: int = 10,
    width_div: int = 1,
    seed: int = 0,
) -> nn.Module:
    """CIFAR VGG (32x32 input); ``width_div`` shrinks every channel count."""
    torch.manual_seed(seed)
    model = VGG(VGG_CFGS[cfg_name], batch_norm, num_classes, width_div)
    _init_conv(model)
    return _randomize(model)


class BasicBlock(nn.Module):
    """ResNet basic block; 1x1 conv + BN projection shortcut when shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), as in torchvision."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with either a CIFAR stem (3x3 conv) or an ImageNet stem (7x7 + pool)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        widths: list[int],
        num_classes: int,
        imagenet_stem: bool,
    ) -> None:
        super().__init__()
        stem_width = widths[0]
        if imagenet_stem:
            self.conv1 = nn.Conv2d(3, stem_width, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, stem_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1) if imagenet_stem else nn.Identity()
        in_planes = stem_width
        stages: list[nn.Module] = []
        for i, (n_blocks, width) in enumerate(zip(layers, widths, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_planes, width, stride))
                in_planes = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages[:3]
        self.layer4: nn.Module = stages[3] if len(stages) > 3 else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20(num_classes: int = 10, seed: int = 0) -> nn.Module:
    """CIFAR ResNet-20 (16/32/64 channels, 3x3 BasicBlocks, option-B shortcuts)."""
    torch.manual_seed(seed)
    model = ResNet(BasicBlock, [3, 3, 3], [16, 32, 64], num_classes, imagenet_stem=False)
    _init_conv(model)
    return _randomize(model)


def resnet50(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """ImageNet ResNet-50 (torchvision layout and parameter names), 224x224 input."""
    torch.manual_seed(seed)
    model = ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], num_classes, imagenet_stem=True)
    _init_conv(model)
    return _randomize(model)


# --------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: str | Path, seed: int = 0
) -> None:
    """Export with the TorchScript exporter and check names and numerics.

    TrainingMode.PRESERVE with constant folding off keeps BatchNormalization
    nodes unfused and every parameter/buffer name as an initializer name, so
    golden scores can be keyed by the torch parameter names.  IR version is
    capped at 8 because onnxruntime refuses the newest IR versions.
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    torch.onnx.export(
        model,
        (torch.ones(input_shape),),
        str(path),
        dynamo=False,
        opset_version=17,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
        input_names=["input"],
        output_names=["output"],
    )
    proto = onnx.load(str(path))
    if proto.ir_version > 8:
        proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))

    inits = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    expected = {
        name: tuple(t.shape)
        for name, t in model.state_dict().items()
        if not name.endswith("num_batches_tracked")
    }
    if inits != expected:
        raise AssertionError(
            f"initializers differ from state_dict: missing {sorted(set(expected) - set(inits))}, "
            f"extra {sorted(set(inits) - set(expected))}, "
            f"shape mismatches {[k for k in expected if k in inits and inits[k] != expected[k]]}"
        )
    n_bn = sum(isinstance(m, BN_TYPES) for m in model.modules())
    n_bn_nodes = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    if n_bn != n_bn_nodes:
        raise AssertionError(f"{n_bn} BatchNorm modules but {n_bn_nodes} BatchNormalization nodes")

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(input_shape, generator=gen)
    with torch.no_grad():
        expected_out = model(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["output"], {"input": x.numpy()})[0]
    err = float(np.max(np.abs(got - expected_out)))
    scale = float(np.max(np.abs(expected_out)))
    if not err <= 1e-4 * scale:
        raise AssertionError(f"onnxruntime output differs from torch: max err {err}, scale {scale}")


# --------------------------------------------------------------------------
# SynFlow reference
# --------------------------------------------------------------------------


def _synflow_network(model: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Float64 copy with abs weights and all shifts removed; returns scored weights.

    Only Conv/Linear weights require grad, so backward does no extra work.
    """
    net = copy.deepcopy(model).double().eval()
    weights: dict[str, torch.Tensor] = {}
    modules = dict(net.named_modules())
    with torch.no_grad():
        for name, m in modules.items():
            if isinstance(m, SCORED_TYPES):
                m.weight.abs_()
                if m.bias is not None:
                    m.bias.zero_()
                weights[f"{name}.weight"] = m.weight
            elif isinstance(m, BN_TYPES):
                m.weight.abs_()
                m.bias.zero_()
                assert m.running_mean is not None
                m.running_mean.zero_()
    for p in net.parameters():
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    return net, weights


def _synflow_scores(
    net: nn.Module, weights: dict[str, torch.Tensor], input_shape: tuple[int, ...]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One SynFlow pass: R = sum(net(ones)); score = w * dR/dw (float64)."""
    x = torch.ones(input_shape, dtype=torch.float64)
    r = net(x).sum()
    grads = torch.autograd.grad(r, list(weights.values()))
    scores = {name: (w.detach() * g) for (name, w), g in zip(weights.items(), grads, strict=True)}
    return scores, r.detach()


def synflow_log_scores(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Golden SynFlow log-scores keyed by parameter (= ONNX initializer) name.

    Also holds ``"__log_R__"``: 0-d array with log of the SynFlow objective R.
    """
    net, weights = _synflow_network(model)
    scores, r = _synflow_scores(net, weights, input_shape)
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore"):
        for name, s in scores.items():
            out[name] = np.log(s.numpy()).astype(np.float64)
        out[LOG_R_KEY] = np.array(
            math.log(r.item()) if r.item() > 0 else -math.inf, dtype=np.float64
        )
    return out


def synflow_prune_reference(
    model: nn.Module, input_shape: tuple[int, ...], sparsity: float, iterations: int = 100
) -> dict[str, np.ndarray]:
    """Iterative SynFlow as in the official code, in float64; returns bool masks.

    After iteration k (1-based) the kept fraction of all Conv/Linear weights is
    ``d ** (k / iterations)`` with ``d = 1 - sparsity``: like Synaptic-Flow,
    ``n_prune = int((1 - d**(k/n)) * N)`` and every weight whose score is
    ``<= kthvalue(scores, n_prune)`` is pruned (ties at the threshold go too).
    Pruned weights score 0, so they stay pruned.
    """
    net, weights = _synflow_network(model)
    dense = {name: w.detach().clone() for name, w in weights.items()}
    masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
    total = sum(w.numel() for w in dense.values())
    density = 1.0 - sparsity
    for k in range(1, iterations + 1):
        with torch.no_grad():
            for name, w in weights.items():
                torch.mul(dense[name], masks[name], out=w)
        scores, _ = _synflow_scores(net, weights, input_shape)
        flat = torch.cat([s.reshape(-1) for s in scores.values()])
        n_prune = int((1.0 - density ** (k / iterations)) * total)
        if n_prune < 1:
            continue
        threshold = torch.kthvalue(flat, n_prune).values
        for name, s in scores.items():
            masks[name] = s > threshold
    return {name: m.numpy() for name, m in masks.items()}


# --------------------------------------------------------------------------
# Committed data
# --------------------------------------------------------------------------

CIFAR_SHAPE = (1, 3, 32, 32)

# name -> (builder, input shape, onnx path)
REFERENCE_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], Path]] = {
    "mlp": (mlp, (1, 64), DATA_DIR / "mlp.onnx"),
    "vgg11": (
        lambda: vgg("vgg11", batch_norm=False, num_classes=10, width_div=16),
        CIFAR_SHAPE,
        DATA_DIR / "vgg11.onnx",
    ),
    "vgg16_bn": (
        lambda: vgg("vgg16", batch_norm=True, num_classes=100, width_div=16),
        CIFAR_SHAPE,
        DATA_DIR / "vgg16_bn.onnx",
    ),
    # The default example model; tests use it from models/ (no copy in tests/data).
    "resnet20": (resnet20, CIFAR_SHAPE, MODELS_DIR / "resnet20.onnx"),
}


def golden_path(name: str) -> Path:
    """Path of the golden log-score file of a reference model."""
    return DATA_DIR / f"{name}.golden.npz"


def main() -> int:
    """Regenerate every committed ONNX model and golden score file."""
    torch.set_grad_enabled(True)
    written: list[Path] = []
    for name, (build, shape, onnx_path) in REFERENCE_MODELS.items():
        model = build()
        export_onnx(model, shape, onnx_path)
        golden = synflow_log_scores(model, shape)
        npz = golden_path(name)
        npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(npz, **golden)  # type: ignore[arg-type]
        written += [onnx_path, npz]
    total = 0
    for p in written:
        size = p.stat().st_size
        total += size
        print(f"{size / 1024:9.1f} KiB  {p.relative_to(TESTS_DIR.parent)}")
    print(f"{total / 1024:9.1f} KiB  total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
