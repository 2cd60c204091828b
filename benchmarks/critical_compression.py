"""Benchmark: highest compression before a layer collapses (Tanaka et al. 2020, figure 1).

VGG-16-BN with a 100-class head (tests/netgen.py: random weights, non-trivial BatchNorm
statistics; 14 prunable layers, N/L ~ 10^6.02). For random and magnitude pruning (one shot,
global, as in the paper's baselines) it scans compressions 10^0.25, 10^0.5, ... and prints
the highest one at which every layer still keeps a weight. For SynFlow (onnxflow, 100
iterations) it checks the given compressions and reports emptied layers and whether an
input-output path survives.

    python benchmarks/critical_compression.py [--synflow 5.75 6.0]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import netgen

import onnxflow


def collapse_point(weights: list[np.ndarray], scores: list[np.ndarray]) -> float:
    """Highest compression (grid of 0.25) at which global top-k by `scores` empties no layer."""
    flat = np.concatenate([s.ravel() for s in scores])
    order = np.argsort(-flat, kind="stable")
    layer_of = np.repeat(np.arange(len(weights)), [w.size for w in weights])
    best = 0.0
    for c in np.arange(0.25, 8.01, 0.25):
        k = round(flat.size * 10.0**-c)
        if k < 1 or np.unique(layer_of[order[:k]]).size < len(weights):
            break
        best = float(c)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synflow", type=float, nargs="*", default=[5.75, 6.0])
    args = ap.parse_args()
    model = netgen.vgg("vgg16", batch_norm=True, num_classes=100)
    names = netgen.prunable_weight_names(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = [inits[n] for n in names]
    n = sum(w.size for w in weights)
    per_layer = math.log10(n / len(weights))
    print(f"VGG-16-BN, {len(weights)} layers, N = {n:,}, N/L = 10^{per_layer:.2f}")
    rng = np.random.default_rng(0)
    rand = collapse_point(weights, [rng.random(w.shape) for w in weights])
    mag = collapse_point(weights, [np.abs(w) for w in weights])
    print(f"random    : last compression with every layer alive 10^{rand:.2f}")
    print(f"magnitude : last compression with every layer alive 10^{mag:.2f}")
    for c in args.synflow:
        t0 = time.perf_counter()
        result = onnxflow.prune(model, compression=c, iterations=100)
        alive = np.isfinite(onnxflow.score(result.model).log_flow)
        print(
            f"synflow   : 10^{c:.2f}: kept {result.report.kept}, emptied layers "
            f"{len(result.report.emptied)}, input-output path {'yes' if alive else 'no'} "
            f"({time.perf_counter() - t0:.0f}s)"
        )


if __name__ == "__main__":
    main()
