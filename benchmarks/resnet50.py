"""Benchmark: ResNet-50 at 224x224, 100 iterations, sparsity 0.99 (issue 2's targets).

Measures, in one run on this machine:
  1. onnxflow, whole process: `onnxflow prune resnet50.onnx --sparsity 0.99 -q` in a fresh
     subprocess; wall time and peak RSS (median of --repeats runs).
  2. The reference: PyTorch float64 autograd SynFlow (the official algorithm: 100 iterations,
     global threshold), same weights, in a fresh subprocess (median of --ref-repeats runs).
  3. One onnxflow iteration (flow-model run + selection + mask update) as a multiple of one
     onnxruntime forward pass of the original model: 60 interleaved pairs, the ratio of the
     medians and the median of the pairs' ratios.

Needs PyTorch for the model and the reference (`pip install torch==2.13.0`); without it,
the model is generated with tests/netgen.py and the reference is skipped.

    python benchmarks/resnet50.py [--repeats 3] [--ref-repeats 3]   (0 and 0: the ratio only)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the reference models live beside the tests
sys.path.insert(0, str(ROOT / "benchmarks"))

from peak_rss import run_with_peak_rss  # noqa: E402

SHAPE = (1, 3, 224, 224)
SPARSITY = 0.99
ITERATIONS = 100
PAIRS = 60  # forward/iteration pairs timed for the iteration ratio


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a command (through peak_rss's launcher)."""
    run = run_with_peak_rss(cmd)
    if run.returncode != 0:
        raise SystemExit(f"{cmd} failed: {run.stderr.strip()}")
    return run.seconds, run.peak_bytes / 2**20


def make_model(path: Path) -> bool:
    """Write ResNet-50 to `path`; True if it came from PyTorch (reference available)."""
    try:
        import torch_reference as ref
    except ImportError:
        import netgen
        import onnx

        onnx.save(netgen.resnet(50), path)
        return False
    ref.export_onnx(ref.resnet50(), SHAPE, path)
    return True


def reference_child() -> None:
    import torch
    import torch_reference as ref

    torch.set_num_threads(os.cpu_count() or 1)
    masks = ref.synflow_prune_reference(ref.resnet50(), SHAPE, SPARSITY, ITERATIONS)
    kept = sum(int(m.sum()) for m in masks.values())
    print(json.dumps({"kept": kept}))


def iteration_ratio(path: Path) -> dict[str, float]:
    import onnx

    from onnxflow.analyze import normalized, weights_of
    from onnxflow.flow.engine import FlowEngine
    from onnxflow.masks import select_global
    from onnxflow.runtime import ort_session

    state = weights_of(*normalized(path))  # the analysis, not linearized
    engine = FlowEngine(state.graph, state.dag, "cpu")
    names = [layer.name for layer in state.dag.layers]
    masks = {layer.name: np.ones(layer.shape, bool) for layer in state.dag.layers}
    k = int(state.dag.size * SPARSITY ** (1 / ITERATIONS))  # a typical step's count

    def one_iteration() -> None:  # as the pruning loop runs every iteration after the first
        scores = engine.run(check=False)
        engine.prune(select_global(names, scores, masks, k, zeroed=True))

    session = ort_session(onnx.load(path).SerializeToString(), "cpu")
    x = np.ones(SHAPE, np.float32)

    def forward() -> None:
        session.run(None, {"input": x})

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    # Interleaved, so that a slow spell of this shared machine hits both alike.
    forward(), one_iteration()
    pairs = [(timed(forward), timed(one_iteration)) for _ in range(PAIRS)]
    fwd = statistics.median(f for f, _ in pairs)
    it = statistics.median(i for _, i in pairs)
    return {
        "forward_s": fwd,
        "iteration_s": it,
        "ratio": it / fwd,
        "ratio_of_pairs": statistics.median(i / f for f, i in pairs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-repeats", type=int, default=3)
    ap.add_argument("--reference-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_child:
        reference_child()
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "resnet50.onnx"
        has_torch = make_model(model)
        prune = [
            "onnxflow",
            "prune",
            str(model),
            "--sparsity",
            str(SPARSITY),
            "--iterations",
            str(ITERATIONS),
            "-q",
            "--provider",
            "cpu",
            "-o",
            str(Path(tmp) / "out.onnx"),
        ]
        reference = [sys.executable, __file__, "--reference-child"]
        flow, ref = [], []
        for i in range(max(args.repeats, args.ref_repeats)):  # alternating, like the pairs
            if i < args.repeats:
                flow.append(run_measured(prune))
            if has_torch and i < args.ref_repeats:
                ref.append(run_measured(reference))
        ratio = iteration_ratio(model)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        **(
            {
                "onnxflow_wall_s": statistics.median(w for w, _ in flow),
                "onnxflow_peak_rss_mib": statistics.median(r for _, r in flow),
                "onnxflow_runs": [round(w, 1) for w, _ in flow],
            }
            if flow
            else {}
        ),
        **(
            {
                "reference_wall_s": statistics.median(w for w, _ in ref),
                "reference_runs": [round(w, 1) for w, _ in ref],
            }
            if ref
            else {}
        ),
        **ratio,
    }
    if ref and flow:
        result["wall_ratio"] = result["onnxflow_wall_s"] / result["reference_wall_s"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
