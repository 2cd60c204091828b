"""Benchmark: channel mode on torchvision ResNet-50 and MobileNetV2 at 224x224 (issue 13).

For each model (random init, exported here with torch.onnx, TorchScript exporter), at
sparsity 0.5 and 100 iterations, in one process:
  - the prunable share of the weights, weights / FLOPs / file size before and after;
  - retained synaptic flow log R (dense and after removal);
  - onnxruntime CPU latency of the dense and the compact model, runs alternated (median of
    --runs each, after a warm-up);
  - the channel-mode run time against the weight-mode run time (same model, iterations,
    sparsity), alternated over --repeats runs each (0: not timed): wall time and the process's
    CPU time (all threads), which a machine shared with other jobs disturbs less;
  - all of this for each group ranking in --rankings (flow, flow per weight, flow per FLOP).

Needs torch and torchvision (the /work/tvenv environment):

    PYTHONPATH=$PWD python benchmarks/channels.py [--models resnet50 mobilenet_v2]
        [--channel-multiple auto|K] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

SHAPE = (1, 3, 224, 224)


def export(name: str, path: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    torch.onnx.export(
        model, (torch.randn(*SHAPE),), str(path), input_names=["input"],
        output_names=["logits"], opset_version=17, dynamo=False,
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )  # fmt: skip
    m = onnx.load(str(path))
    m.ir_version = 10
    onnx.save(m, str(path))


def off_block(model: onnx.ModelProto, block: int = 16) -> tuple[int, int, float]:
    """Convolutions that onnxruntime's NCHWc kernels (block 16 on AVX-512, 8 on AVX2) cannot
    take: input channels neither below the block nor a multiple of it, or a grouped conv's
    output channels not a multiple of it (onnxruntime's nchwc_transformer). Returns (those,
    all convs, their share of the conv multiply-accumulates)."""
    from onnx import numpy_helper, shape_inference

    m = shape_inference.infer_shapes(model)
    dims = {t.name: numpy_helper.to_array(t).shape for t in m.graph.initializer}
    spatial = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim][2:]
        for vi in list(m.graph.value_info) + list(m.graph.output)
    }
    total = off = 0.0
    count = bad = 0
    for node in m.graph.node:
        if node.op_type != "Conv" or node.input[1] not in dims:
            continue
        w = dims[node.input[1]]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        macs = float(np.prod(w)) * float(np.prod(spatial.get(node.output[0]) or [1]))
        cin, cout = w[1] * group, w[0]
        ok = (cin < block or cin % block == 0) and (group == 1 or cout % block == 0)
        count += 1
        total += macs
        if not ok:
            bad += 1
            off += macs
    return bad, count, off / total if total else 0.0


def bench(
    path: Path,
    sparsity: float,
    iterations: int,
    runs: int,
    repeats: int,
    rankings: list[str],
    multiple: int | str = "auto",
) -> dict[str, Any]:
    """Weight-mode and channel-mode (first ranking) run times alternated over `repeats`;
    then every ranking's figures and latencies."""
    import onnxflow
    from onnxflow.channels.report import measure_latency

    times: dict[str, list[float]] = {"weight": [], "channel": []}
    cpu: dict[str, list[float]] = {"weight": [], "channel": []}
    results = {}
    for _ in range(repeats):
        for mode in ("weight", "channel"):
            t0, c0 = time.perf_counter(), time.process_time()
            if mode == "weight":
                onnxflow.prune(path, sparsity=sparsity, iterations=iterations, keep_scores=False)
            else:
                results[rankings[0]] = onnxflow.prune(
                    path, granularity="channel", sparsity=sparsity, iterations=iterations,
                    ranking=rankings[0], channel_multiple=multiple,
                )  # fmt: skip
            times[mode].append(time.perf_counter() - t0)
            cpu[mode].append(time.process_time() - c0)
    for ranking in rankings:
        if ranking not in results:
            results[ranking] = onnxflow.prune(
                path, granularity="channel", sparsity=sparsity, iterations=iterations,
                ranking=ranking, channel_multiple=multiple,
            )  # fmt: skip
    original = onnx.load(str(path))
    out: dict[str, Any] = {"times": times, "cpu_times": cpu}
    if times["weight"]:
        out["weight_mode_s"] = statistics.median(times["weight"])
        out["channel_mode_s"] = statistics.median(times["channel"])
        out["run_time_ratio"] = out["channel_mode_s"] / out["weight_mode_s"]
        out["cpu_time_ratio"] = statistics.median(cpu["channel"]) / statistics.median(cpu["weight"])
    for ranking, result in results.items():
        r = result.report
        before, after = measure_latency(original, result.model, {"input": SHAPE}, runs=runs)
        out[ranking] = {
            "groups": r.groups,
            "prunable_groups": r.prunable_groups,
            "removed_groups": r.removed_groups,
            "frozen": r.frozen,
            "prunable_share": r.prunable_weights / r.weights,
            "removed_share_of_prunable": r.removed_share,
            "weights_before": r.weights,
            "weights_after": r.weights_after,
            "params_before": r.params_before,
            "params_after": r.params_after,
            "flops_before": r.flops_before,
            "flops_after": r.flops_after,
            "flops_ratio": r.flops_after / r.flops_before,
            "bytes_before": r.bytes_before,
            "bytes_after": r.bytes_after,
            "log_flow": r.log_flow,
            "log_flow_after": r.log_flow_after,
            "max_relative_difference": r.max_relative_difference,
            "latency_ms_before": before,
            "latency_ms_after": after,
            "latency_ratio": after / before,
            "off_block16": off_block(result.model),
            "off_block8": off_block(result.model, 8),
            "seconds": r.seconds,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--runs", type=int, default=30, help="latency runs of each model")
    ap.add_argument("--repeats", type=int, default=1, help="pruning runs of each mode")
    ap.add_argument(
        "--rankings", nargs="+", default=["flow", "flow-per-flop", "flow-per-weight"],
        help="channel rankings to run (the first is also timed against weight mode)",
    )  # fmt: skip
    ap.add_argument(
        "--channel-multiple", default="auto", help="--channel-multiple K or auto (the default)"
    )
    ap.add_argument("--cache", type=Path, help="keep the exported models in this folder")
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    args = ap.parse_args()
    figures = {}
    multiple = (
        args.channel_multiple if args.channel_multiple == "auto" else int(args.channel_multiple)
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.cache or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            path = folder / f"{name}.onnx"
            if not path.exists():
                export(name, path)
            figures[name] = bench(
                path, args.sparsity, args.iterations, args.runs, args.repeats, args.rankings,
                multiple,
            )  # fmt: skip
            print(name, json.dumps(figures[name], indent=1), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
