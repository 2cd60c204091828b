"""Peak memory of `onnxflow prune` on generated models with external data (issue: models over
2 GB, peak RSS under 2.5x the model's size, growing linearly with it).

Each model is an MLP of square float32 MatMul layers (8192 x 8192 = 256 MiB each) with ReLUs,
stored as `model.onnx` + `model.onnx.data` and written layer by layer, so the generator never
holds the model in memory. Each prune runs in its own process; its peak RSS (ru_maxrss) is
compared with the model's size on disk.

    python benchmarks/large_model.py                 # 0.75, 1.5 and 3 GB
    python benchmarks/large_model.py --sizes 3 --runs 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper
from peak_rss import run_with_peak_rss

GB = 1e9


def write_model(folder: Path, layers: int, width: int) -> Path:
    path = folder / "model.onnx"
    data = folder / "model.onnx.data"
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    with open(data, "wb") as f:
        for i in range(layers):
            offset = f.tell()
            for rows in np.array_split(np.arange(width), 8):  # 32 MiB at a time
                w = rng.standard_normal((rows.size, width), dtype=np.float32)
                w *= np.float32(1 / np.sqrt(width))
                f.write(w.tobytes())
            t = TensorProto(name=f"w{i}", dims=[width, width], data_type=TensorProto.FLOAT)
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data.name), ("offset", offset), ("length", 4 * width**2)):
                e = t.external_data.add()
                e.key, e.value = k, str(v)
            inits.append(t)
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
            x = f"h{i}"
            if i < layers - 1:
                nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
                x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path.write_bytes(model.SerializeToString())
    return path


def prune_peak_rss(model: Path, iterations: int) -> tuple[int, float]:
    """Peak RSS in bytes and wall seconds of one `onnxflow prune` process."""
    out = model.with_name("pruned.onnx")
    cmd = [
        sys.executable, "-m", "onnxflow.cli", "prune", str(model), "-q",
        "--sparsity", "0.99", "--iterations", str(iterations), "-o", str(out),
    ]  # fmt: skip
    run = run_with_peak_rss(cmd)
    if run.returncode != 0:
        sys.exit(f"prune failed: {run.stderr.strip()}")
    pruned = out.stat().st_size + out.with_name(out.name + ".data").stat().st_size
    assert pruned > 0.9 * (model.stat().st_size + model.with_name("model.onnx.data").stat().st_size)
    return run.peak_bytes, run.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.75, 1.5, 3.0], help="GB")
    ap.add_argument("--width", type=int, default=8192)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=None, help="work folder [a temporary one]")
    args = ap.parse_args()
    layer_bytes = 4 * args.width**2
    print(f"{'model GB':>9} {'layers':>6} {'params':>14} {'peak RSS GB':>12} {'ratio':>6} {'s':>6}")
    for size in args.sizes:
        folder = Path(tempfile.mkdtemp(prefix="onnxflow-large-", dir=args.dir))
        try:
            layers = max(1, round(size * GB / layer_bytes))
            model = write_model(folder, layers, args.width)
            disk = model.stat().st_size + (folder / "model.onnx.data").stat().st_size
            runs = [prune_peak_rss(model, args.iterations) for _ in range(args.runs)]
            rss = statistics.median(r for r, _ in runs)
            secs = statistics.median(s for _, s in runs)
            print(
                f"{disk / GB:9.2f} {layers:6d} {layers * args.width**2:14,d} "
                f"{rss / GB:12.2f} {rss / disk:6.2f} {secs:6.1f}",
                flush=True,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
