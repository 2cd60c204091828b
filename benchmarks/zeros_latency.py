"""Benchmark: do zeros make a dense runtime faster? onnxruntime latency of a model and of the
same model pruned to 1% of its weights (unstructured), on the CPU.

The pruned model has the same graph and shapes, with 99% of its prunable weights set to zero;
a dense kernel multiplies the zeros all the same. Runs alternate (dense, pruned, dense, ...)
so that the machine's drift hits both alike; the figure is the ratio of the medians.

    python benchmarks/zeros_latency.py MODEL.onnx [--sparsity 0.99] [--iterations 10] [--runs 40]

With no MODEL, ResNet-50 at 224x224 from torchvision (needs PyTorch; random weights).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnxflow


def resnet50(path: Path) -> None:
    import torch
    import torchvision

    model = torchvision.models.resnet50(weights=None).eval()
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False,
                      opset_version=17, input_names=["input"])  # fmt: skip
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, 10)
    onnx.save(proto, str(path))


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path)
    ap.add_argument("--sparsity", type=float, default=0.99)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or Path(tmp) / "resnet50.onnx"
        if args.model is None:
            resnet50(model)
        result = onnxflow.prune(model, sparsity=args.sparsity, iterations=args.iterations)
        pruned = Path(tmp) / "pruned.onnx"
        onnxflow.save(result, pruned)
        sessions = {"dense": session(model), "pruned": session(pruned)}
        inp = sessions["dense"].get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        x = {inp.name: np.random.default_rng(0).normal(size=shape).astype(np.float32)}
        times: dict[str, list[float]] = {"dense": [], "pruned": []}
        for sess in sessions.values():  # warm-up
            for _ in range(3):
                sess.run(None, x)
        for _ in range(args.runs):
            for name, sess in sessions.items():
                t0 = time.perf_counter()
                sess.run(None, x)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [p / d for d, p in zip(times["dense"], times["pruned"], strict=True)]
    print(f"model {args.model or 'resnet50 224x224'}: kept {result.report.kept:,} of "
          f"{result.report.params:,} weights ({result.report.density:.2%})")  # fmt: skip
    print(f"median latency: dense {med['dense'] * 1e3:.1f} ms, pruned {med['pruned'] * 1e3:.1f} ms,"
          f" ratio {med['pruned'] / med['dense']:.3f}x (median of pair ratios "
          f"{statistics.median(ratios):.3f}x, {args.runs} pairs)")  # fmt: skip


if __name__ == "__main__":
    main()
