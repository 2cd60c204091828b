"""Channel groups across torchvision classification models: which prune, the prunable share
of their weights, and why groups are frozen (no pruning run: the analysis only).

Each model is built with random weights (`weights=None`) and exported with the TorchScript
exporter at a small input (64x64; 224 where the architecture needs it), then traced.

    PYTHONPATH=$PWD python benchmarks/channels_zoo.py [--models resnet18 ...] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

MODELS = [
    "alexnet", "vgg11_bn", "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2",
    "densenet121", "squeezenet1_1", "googlenet", "inception_v3", "mobilenet_v2",
    "mobilenet_v3_small", "mnasnet0_5", "shufflenet_v2_x0_5", "efficientnet_b0",
    "efficientnet_v2_s", "regnet_x_400mf", "regnet_y_400mf", "convnext_tiny", "vit_b_16",
    "swin_t", "maxvit_t",
]  # fmt: skip
NEEDS_224 = {"vit_b_16", "inception_v3", "swin_t", "maxvit_t", "alexnet"}


def export(name: str, path: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"weights": None}
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = False
    model = getattr(torchvision.models, name)(**kwargs).eval()
    hw = 299 if name == "inception_v3" else 224 if name in NEEDS_224 else 64
    torch.onnx.export(
        model, (torch.randn(1, 3, hw, hw),), str(path), input_names=["input"],
        output_names=["logits"], opset_version=17, dynamo=False,
    )  # fmt: skip
    m = onnx.load(str(path))
    m.ir_version = 10
    onnx.save(m, str(path))


def analyse_one(path: Path) -> dict[str, Any]:
    from onnxflow.channels.api import analyse
    from onnxflow.channels.score import Budget
    from onnxflow.options import PruneOptions

    a = analyse(path, PruneOptions(sparsity=0.5))
    cg = a.groups
    budget = Budget(cg)
    return {
        "groups": len(cg.groups),
        "prunable_groups": len(cg.prunable),
        "weights": a.dag.size,
        "prunable_weights": budget.total,
        "prunable_share": budget.total / a.dag.size if a.dag.size else 0.0,
        "frozen": cg.frozen_summary(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = Path(tmp) / f"{name}.onnx"
            t0 = time.perf_counter()
            try:
                export(name, path)
                results[name] = analyse_one(path)
            except Exception as e:  # noqa: BLE001 - record and go on to the next model
                results[name] = {"error": " ".join(str(e).split())[:300]}
            results[name]["seconds"] = round(time.perf_counter() - t0, 1)
            path.unlink(missing_ok=True)
            print(name, json.dumps(results[name]), flush=True)
            if args.out is not None:
                args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
