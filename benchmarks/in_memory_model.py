"""onnx-ir against onnx + onnx-graphsurgeon as onnxflow's in-memory model (issue 12).

Two measurements, each step in a fresh child process (peak RSS is the child's VmHWM):

  large     load + walk + save of a generated MLP with external data (benchmarks/large_model.py
            writes it: 256 MiB float32 MatMul weights). The walk reads every weight once and
            keeps a boolean mask of it, as the pruner does; the save writes the masked model
            with its weights in one external data file.
              gs        what onnxflow does today: passes.load.load_model (checks, large weights
                        left in their file), gs.import_onnx + external.attach, constant_array
                        per weight, passes.apply_masks.apply_masks (in place) and
                        external.ExternalDataWriter through save.write_atomically.
              gs-fromfile  the same, reading external tensors with np.fromfile (one copy,
                        where external.read_external makes three).
              ir-eager  onnx_ir.load (external tensors are memory-mapped on demand), numpy()
                        per weight (then release()), masked weights set as in-memory tensors,
                        onnx_ir.save(external_data=...), then fsync of both files (save.py
                        fsyncs; onnx_ir does not).
              ir-lazy   the same, but each masked weight is an onnx_ir.LazyTensor computed
                        while save streams it out, so no masked copy is held.
  analysis  the analysis stage's graph operations on ResNet-50 (torchvision layout, random
            weights, 224x224, TorchScript export with BatchNormalization kept, as
            benchmarks/resnet50.py): load, shape inference, constant folding, cleanup +
            toposort, a walk over every value, and writing back a ModelProto; graph-surgeon
            as normalize.py calls it, onnx-ir with its passes (folding from onnxscript's
            optimizer when onnxscript is installed). Also onnxflow's whole analysis stage
            (analyze.py: load_source, NormalizePass, LinearizePass, weights_of) for scale,
            and the same with shape inference run on the model without its large
            initializers, as onnx-ir does it (stage-lean).

Needs onnx_ir (`pip install onnx-ir`); without it the script says so and exits 0. The
ResNet-50 export needs torch + torchvision (or pass --model).

    python benchmarks/in_memory_model.py large [--sizes 0.75 1.5] [--runs 1]
    python benchmarks/in_memory_model.py analysis [--model resnet50.onnx] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
THRESHOLD = np.float32(0.5 / 8192**0.5)  # |w| below this is masked: about 40% of N(0, 1/n)


def _peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec
    from the forking parent, so a child of a parent that held a large model would report
    the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- large: load + walk + save ---------------------------------------------------------


def large_gs(model: Path, out: Path) -> dict[str, float]:
    import onnx_graphsurgeon as gs

    from onnxflow.external import ExternalDataWriter, attach, constant_array, data_path
    from onnxflow.passes.apply_masks import apply_masks
    from onnxflow.passes.load import load_model
    from onnxflow.save import write_atomically

    t0 = time.perf_counter()
    proto, _ = load_model(model)
    graph = gs.import_onnx(proto)
    attach(graph, model.parent)
    t1 = time.perf_counter()
    stored = {t.name for t in proto.graph.initializer}
    masks = {}
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Constant) and name in stored:
            masks[name] = np.abs(constant_array(t)) >= THRESHOLD
    t2, walked = time.perf_counter(), _peak_rss_mib()
    pruned = apply_masks(proto, masks, model.parent, in_place=True)
    writer = ExternalDataWriter(pruned, data_path(out).name)
    write_atomically({data_path(out): writer.write_data, out: writer.write_model})
    t3 = time.perf_counter()
    return {"load_s": t1 - t0, "walk_s": t2 - t1, "save_s": t3 - t2, "walk_rss_mib": walked}


def large_gs_fromfile(model: Path, out: Path) -> dict[str, float]:
    """`gs` with one change: external tensors read by np.fromfile (one copy) instead of
    read + TensorProto + to_array (three): how much of onnx-ir's gain is its reading."""
    import math

    import onnx

    import onnxflow.external as external
    import onnxflow.passes.apply_masks as apply_masks
    import onnxflow.tensors as tensors

    def read(t: onnx.TensorProto, base: Path) -> np.ndarray:
        info = external.external_info(t)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        values = np.fromfile(
            base / info["location"], dtype, math.prod(t.dims), offset=int(info.get("offset", 0))
        )
        return values.reshape(tuple(t.dims))

    for module in (external, apply_masks, tensors):
        module.read_external = read  # type: ignore[attr-defined]
    return large_gs(model, out)


def large_ir(model: Path, out: Path, lazy: bool) -> dict[str, float]:
    import onnx
    import onnx_ir as ir

    t0 = time.perf_counter()
    onnx.checker.check_model(str(model))  # as load_model does; onnx_ir checks nothing
    m = ir.load(model)
    t1 = time.perf_counter()
    masks = {}
    for name, v in m.graph.initializers.items():
        tensor = v.const_value
        assert tensor is not None
        masks[name] = np.abs(tensor.numpy()) >= THRESHOLD
        if isinstance(tensor, ir.ExternalTensor):
            tensor.release()  # unmap: mapped pages count in RSS
    t2, walked = time.perf_counter(), _peak_rss_mib()
    for name, v in m.graph.initializers.items():
        source = v.const_value
        assert source is not None

        def masked(source: Any = source, keep: np.ndarray = masks[name]) -> Any:
            values = np.where(keep, source.numpy(), np.float32(0))
            if isinstance(source, ir.ExternalTensor):
                source.release()
            return ir.tensor(values)

        if lazy:
            v.const_value = ir.LazyTensor(masked, dtype=source.dtype, shape=source.shape)
        else:
            v.const_value = masked()
    m.ir_version = min(m.ir_version, 10)
    ir.save(m, out, external_data=out.name + ".data")
    for written in (out, out.with_name(out.name + ".data")):  # durable, as save.py makes it
        with open(written, "rb") as f:
            os.fsync(f.fileno())
    t3 = time.perf_counter()
    return {"load_s": t1 - t0, "walk_s": t2 - t1, "save_s": t3 - t2, "walk_rss_mib": walked}


LARGE: dict[str, Callable[[Path, Path], dict[str, float]]] = {
    "gs": large_gs,
    "gs-fromfile": large_gs_fromfile,
    "ir-eager": lambda m, o: large_ir(m, o, lazy=False),
    "ir-lazy": lambda m, o: large_ir(m, o, lazy=True),
}


def _check_output(model: Path, out: Path) -> None:
    """The pruned file has every weight masked exactly as the rule says."""
    import onnx
    from onnx import numpy_helper

    a = onnx.load(str(model))
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    for t in a.graph.initializer:
        w = numpy_helper.to_array(t)
        want = np.where(np.abs(w) >= THRESHOLD, w, np.float32(0))
        assert np.array_equal(b[t.name], want), t.name


def run_large(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from large_model import GB, write_model

    print(f"{'model GB':>8} {'mode':<11} {'peak RSS GiB':>12} {'x model':>7} {'walk GiB':>8} "
          f"{'load s':>6} {'walk s':>6} {'save s':>6} {'total s':>7}")  # fmt: skip
    for size in args.sizes:
        folder = Path(tempfile.mkdtemp(prefix="onnxflow-ir-", dir=args.dir))
        try:
            layers = max(1, round(size * GB / (4 * args.width**2)))
            model = write_model(folder, layers, args.width)
            disk = model.stat().st_size + (folder / "model.onnx.data").stat().st_size
            for i in range(args.runs):
                for mode in args.modes:
                    out = folder / f"out-{mode}.onnx"
                    r = _child(["large", mode, str(model), str(out)])
                    if i == 0 and args.check:
                        _check_output(model, out)
                    for f in (out, out.with_name(out.name + ".data")):
                        f.unlink(missing_ok=True)
                    total = r["load_s"] + r["walk_s"] + r["save_s"]
                    print(
                        f"{disk / GB:8.2f} {mode:<11} {r['rss_mib'] / 1024:12.2f} "
                        f"{r['rss_mib'] * 2**20 / disk:7.2f} {r['walk_rss_mib'] / 1024:8.2f} "
                        f"{r['load_s']:6.2f} "
                        f"{r['walk_s']:6.2f} {r['save_s']:6.2f} {total:7.2f}",
                        flush=True,
                    )
        finally:
            shutil.rmtree(folder, ignore_errors=True)


# --- analysis on ResNet-50 -------------------------------------------------------------


def _timed(steps: list[tuple[str, Callable[[], Any]]]) -> dict[str, float]:
    out = {}
    for name, fn in steps:
        t0 = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t0
    return out


def analysis_gs(model: Path) -> dict[str, float]:
    import onnx
    import onnx_graphsurgeon as gs

    from onnxflow.passes.normalize import _infer_shapes
    from onnxflow.runtime import quiet_onnxruntime

    quiet_onnxruntime()
    box: dict[str, Any] = {}

    def load() -> None:
        box["g"] = gs.import_onnx(onnx.load(str(model)))

    def fold() -> None:
        box["g"].fold_constants(fold_shapes=True, error_ok=True, flatten_subgraphs=False)

    def walk() -> None:
        variables = [t for t in box["g"].tensors().values() if isinstance(t, gs.Variable)]
        box["n"] = (len(variables), sum(_static(t.shape) for t in variables))

    def lean_inference() -> None:
        """onnx-ir's way, on graph-surgeon's graph: constants over 1 KB become inputs (type
        and shape only), so onnx's C++ inference does not copy the weights there and back."""
        proto = gs.export_onnx(box["g"], do_type_check=False)
        big = [t for t in proto.graph.initializer if t.ByteSize() > 1000]
        keep = [t for t in proto.graph.initializer if t.ByteSize() <= 1000]
        for t in big:
            proto.graph.input.append(
                onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
            )
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)
        onnx.shape_inference.infer_shapes(proto, data_prop=True)

    times = _timed([
        ("load", load),
        ("shape_inference", lambda: _infer_shapes(box["g"])),
        ("fold_constants", fold),
        ("cleanup_toposort", lambda: box["g"].cleanup().toposort()),
        ("walk_values", walk),
        ("to_proto", lambda: gs.export_onnx(box["g"], do_type_check=False)),
    ])  # fmt: skip
    alt = _timed([("lean_shape_inference", lean_inference)])
    return {**times, **{f"alt_{k}": v for k, v in alt.items()}, **_counts(box["n"])}


def _static(shape: Any) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def _counts(n: tuple[int, int]) -> dict[str, float]:
    return {"n_values": n[0], "n_static": n[1]}


def analysis_ir(model: Path) -> dict[str, float]:
    import onnx_ir as ir
    import onnx_ir.passes.common as common

    box: dict[str, Any] = {}

    def load() -> None:
        box["m"] = ir.load(model)

    def fold() -> None:
        try:
            from onnxscript.optimizer import fold_constants
        except ImportError:
            return
        fold_constants(box["m"])

    def cleanup() -> None:
        common.RemoveUnusedNodesPass()(box["m"])
        common.TopologicalSortPass()(box["m"])

    def walk() -> None:
        graph = box["m"].graph
        values = [*graph.inputs, *(v for n in graph for v in n.outputs)]
        box["n"] = (len(values), sum(_static(v.shape and tuple(v.shape)) for v in values))

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("load", load),
        ("name_fix", lambda: common.NameFixPass()(box["m"])),
        ("shape_inference", lambda: common.ShapeInferencePass()(box["m"])),
        ("fold_constants", fold),
        ("cleanup_toposort", cleanup),
        ("walk_values", walk),
        ("to_proto", lambda: ir.serde.serialize_model(box["m"])),
    ]
    return {**_timed(steps), **_counts(box["n"])}


def analysis_stage(model: Path) -> dict[str, float]:
    """onnxflow's whole analysis stage (onnxflow/analyze.py), its parts timed."""
    from onnxflow.analyze import weights_of
    from onnxflow.passes.linearize import LinearizePass
    from onnxflow.passes.load import load_source
    from onnxflow.passes.normalize import NormalizePass, import_graph
    from onnxflow.tensors import stored_tensor_names

    box: dict[str, Any] = {}

    def load() -> None:
        box["source"] = load_source(model)

    def normalize() -> None:
        box["graph"] = import_graph(box["source"])
        NormalizePass({}, stored_tensor_names(box["source"].model))(box["graph"])

    return _timed([
        ("load_source", load),
        ("import_normalize", normalize),
        ("linearize", lambda: LinearizePass()(box["graph"])),
        ("weights_of", lambda: weights_of(box["source"], box["graph"], [])),
    ])  # fmt: skip


def analysis_stage_lean(model: Path) -> dict[str, float]:
    """`stage` with onnx's shape inference given the model without its initializers over
    1 KB (as inputs of their type and shape), onnx-ir's way, patched in for this process."""
    import onnx

    infer = onnx.shape_inference.infer_shapes

    def lean(proto: onnx.ModelProto, *args: Any, **kwargs: Any) -> onnx.ModelProto:
        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(proto)  # small beside the copies inference makes of the weights
        graph = skeleton.graph
        big = [t for t in graph.initializer if t.ByteSize() > 1000]
        small = [t for t in graph.initializer if t.ByteSize() <= 1000]
        for t in big:
            graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims))
        del graph.initializer[:]
        graph.initializer.extend(small)
        return infer(skeleton, *args, **kwargs)

    onnx.shape_inference.infer_shapes = lean  # type: ignore[assignment]
    return analysis_stage(model)


ANALYSIS: dict[str, Callable[[Path], dict[str, float]]] = {
    "gs": analysis_gs,
    "ir": analysis_ir,
    "stage": analysis_stage,
    "stage-lean": analysis_stage_lean,
}


def export_resnet50(path: Path) -> None:
    """torchvision ResNet-50 (weights=None), 224x224, exported as benchmarks/resnet50.py does."""
    import onnx
    import torch
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None).eval()
    torch.onnx.export(
        net, (torch.ones(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
        training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
        input_names=["input"], output_names=["output"],
    )  # fmt: skip
    m = onnx.load(str(path))
    m.ir_version = 10
    onnx.save(m, str(path))


def run_analysis(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            try:
                import torchvision  # noqa: F401
            except ImportError:
                print("skipped: no --model given and torchvision is not installed")
                return
            model = Path(tmp) / "resnet50.onnx"
            export_resnet50(model)
        rows: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.repeats):
            for mode in args.modes:
                rows.setdefault(mode, []).append(_child(["analysis", mode, str(model)]))
        for mode, runs in rows.items():
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            extra = {k: v for k, v in med.items() if k[:2] == "n_" or k[:4] == "alt_"}
            steps = {k: v for k, v in med.items() if k != "rss_mib" and k not in extra}
            print(
                f"{mode:<10} total {sum(steps.values()):6.2f} s  "
                f"peak RSS {med['rss_mib']:6.0f} MiB  "
                f"({', '.join(f'{k} {v:.2f}' for k, v in steps.items())}) "
                f"{' '.join(f'{k}={v:g}' for k, v in extra.items())}",
                flush=True,
            )


# --- children and entry point ----------------------------------------------------------


def _child(argv: list[str]) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", *argv]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{res.stderr.strip()}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def child(argv: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    kind, mode, *paths = argv
    if kind == "large":
        result = LARGE[mode](Path(paths[0]), Path(paths[1]))
    else:
        result = ANALYSIS[mode](Path(paths[0]))
    print(json.dumps({**result, "rss_mib": _peak_rss_mib()}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    try:
        import onnx_ir  # noqa: F401
    except ImportError:
        print("skipped: onnx_ir is not installed (pip install onnx-ir)")
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    lg = sub.add_parser("large", help="load + walk + save of a model with external data")
    lg.add_argument("--sizes", type=float, nargs="+", default=[0.75, 1.5], help="GB")
    lg.add_argument("--width", type=int, default=8192)
    lg.add_argument("--runs", type=int, default=1)
    lg.add_argument("--modes", nargs="+", default=list(LARGE), choices=list(LARGE))
    lg.add_argument("--no-check", dest="check", action="store_false",
                    help="skip checking the written weights")  # fmt: skip
    lg.add_argument("--dir", type=Path, default=None, help="work folder [a temporary one]")
    an = sub.add_parser("analysis", help="the analysis stage's graph operations on ResNet-50")
    an.add_argument("--model", type=Path, default=None, help="[export ResNet-50 with torch]")
    an.add_argument("--repeats", type=int, default=3)
    an.add_argument("--modes", nargs="+", default=list(ANALYSIS), choices=list(ANALYSIS))
    args = ap.parse_args()
    if args.what == "large":
        run_large(args)
    else:
        run_analysis(args)


if __name__ == "__main__":
    main()
