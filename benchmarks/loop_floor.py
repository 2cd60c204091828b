"""Benchmark: the least one pruning iteration can cost with onnxruntime ops (issue 12).

An iteration must run three products over the masked |W| (the flow forward, the transposed
backward and the weight gradient), each fed the weights as inputs, since they change between
runs and onnxruntime cannot pre-pack them as it does a model's initializers; multiply the
weight gradient by |W| into the scores; then selection reads every score at least once and
the mask update reads and writes every weight. This
script measures those parts on the models of `loop_cost.py`, interleaved in rounds so that
a slow spell of the machine hits them alike (medians over the rounds):

  - `forward_ms`: the original model's forward pass (weights pre-packed), the reference;
  - `inputs_ms`: the same forward graph with every prunable weight a graph input fed |W|:
    one product pass as the flow model can run it (the flow model runs three);
  - `read_ms`, `write_ms`, `multiply_ms`: numpy passes over the N float32 weights on one
    thread: reading them (a max, as selection must at least), reading and writing them in
    place (as the mask update must), and multiplying two such arrays into a third (the
    scores, |W| times the weight gradient);
  - `flow_ms`: the flow model itself, as the pruning loop runs it (`FlowEngine.run`);
  - `floor`: (3 x inputs + multiply + read + write) / forward, the ratio no iteration built
    of plain onnxruntime ops and numpy passes goes below (nothing counted for renormalizing,
    the depthwise and strided products' extra ops, or per-op costs); `flow_ratio`:
    flow / forward.

Needs PyTorch and torchvision (only to export, as `loop_cost.py`).

    python benchmarks/loop_floor.py [--rounds 40] [--models mobilenet_v2@64,...] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_cost import TARGETS, cached_models


def with_weight_inputs(proto: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """`proto` with the initializers `names` turned into graph inputs."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    kept = [t for t in out.graph.initializer if t.name not in names]
    moved = [t for t in out.graph.initializer if t.name in names]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    for t in moved:
        out.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return out


def median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1e3, 3)


def measure(path: Path, size: int, rounds: int) -> dict[str, float]:
    import onnxruntime as ort

    from onnxflow.analyze import analyze
    from onnxflow.flow.engine import FlowEngine
    from onnxflow.runtime import ort_session

    proto = onnx.load(path)
    analysis = analyze(str(path))
    names = {layer.name for layer in analysis.dag.layers}
    initial = {t.name: t for t in proto.graph.initializer}
    weights = {n: np.abs(numpy_helper.to_array(initial[n])).astype(np.float32) for n in names}
    x = np.ones((1, 3, size, size), np.float32)

    dense = ort_session(proto.SerializeToString(), "cpu")
    dense_io = dense.io_binding()
    dense_io.bind_cpu_input("input", x)
    dense_io.bind_output("output")
    fed = ort_session(with_weight_inputs(proto, names).SerializeToString(), "cpu")
    fed_io = fed.io_binding()
    fed_io.bind_cpu_input("input", x)
    for n, w in weights.items():
        fed_io.bind_ortvalue_input(n, ort.OrtValue.ortvalue_from_numpy(w))
    fed_io.bind_output("output")
    engine = FlowEngine(analysis.graph, analysis.dag, "cpu")

    def read() -> None:
        for w in weights.values():
            w.max()

    def write() -> None:
        for w in weights.values():
            np.multiply(w, np.float32(1.0), out=w)

    grads = {n: np.ones_like(w) for n, w in weights.items()}
    scores = {n: np.empty_like(w) for n, w in weights.items()}

    def multiply() -> None:
        for n, w in weights.items():
            np.multiply(w, grads[n], out=scores[n])

    parts: dict[str, Callable[[], object]] = {
        "forward": lambda: dense.run_with_iobinding(dense_io),
        "inputs": lambda: fed.run_with_iobinding(fed_io),
        "read": read,
        "write": write,
        "multiply": multiply,
        "flow": lambda: engine.run(check=False),
    }
    times: dict[str, list[float]] = {k: [] for k in parts}
    for r in range(rounds + 2):
        for key, fn in parts.items():
            t = time.perf_counter()
            fn()
            if r >= 2:  # two warm-up rounds
                times[key].append(time.perf_counter() - t)
    ms = {f"{k}_ms": median_ms(v) for k, v in times.items()}
    f = ms["forward_ms"]
    floor = (3 * ms["inputs_ms"] + ms["multiply_ms"] + ms["read_ms"] + ms["write_ms"]) / f
    return {
        "weights": sum(w.size for w in weights.values()),
        **ms,
        "inputs_ratio": round(ms["inputs_ms"] / f, 2),
        "flow_ratio": round(ms["flow_ms"] / f, 2),
        "floor": round(floor, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--models", default=",".join(TARGETS))
    ap.add_argument("--cache", help="folder to keep the exported models in")
    args = ap.parse_args()
    results = {}
    for key, path, size in cached_models(args.models, args.cache):
        results[key] = {**measure(path, size, args.rounds), "target": TARGETS.get(key)}
        print(key, json.dumps(results[key]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
