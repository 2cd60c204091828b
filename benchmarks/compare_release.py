"""Compare `onnxflow prune` at this tree with a release (or any git ref) on every committed model.

The ref is checked out into a temporary `git worktree`; both trees prune the same model files
(this tree's models/*.onnx and tests/exported/**/*.onnx) with the same options, each prune in
its own process with PYTHONPATH pointing at its tree, writing the pruned model and its masks.
Compared per model and sparsity:

  masks    np.array_equal on every key of the two .npz files (and the same keys)
  weights  bit equality of the pruned models' stored tensors (initializers, sparse ones
           densified, and Constant-node values), by name
  bytes    whether the .onnx files (and any .data beside them) are byte-identical

Models the ref refuses are listed, not compared. Exits 1 if any mask or weight differs, or if
this tree refuses a model the ref accepted.

    python benchmarks/compare_release.py --ref 52497b0
    python benchmarks/compare_release.py --ref main --sparsity 0.9 --iterations 100
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
PATTERNS = (":(glob)models/*.onnx", ":(glob)tests/exported/**/*.onnx")


@dataclass
class Run:
    """One `onnxflow prune` of one model at one sparsity by one tree."""

    code: int
    error: str
    output: Path
    masks: Path


def committed_models() -> list[Path]:
    """This tree's committed model files (git's list, so stray local files are left out)."""
    out = subprocess.run(
        ["git", "ls-files", "--", *PATTERNS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return sorted(ROOT / p for p in out if p.endswith(".onnx"))


def prune(
    tree: Path, model: Path, sparsity: float, iterations: int, out: Path, extra: list[str]
) -> Run:
    """Prune `model` with the onnxflow of `tree`, in a fresh process run outside both trees."""
    out.mkdir(parents=True, exist_ok=True)
    output, masks = out / "pruned.onnx", out / "masks.npz"
    cmd = [
        sys.executable, "-m", "onnxflow.cli", "prune", str(model), "-q",
        "--sparsity", str(sparsity), "--iterations", str(iterations), "--provider", "cpu",
        "-o", str(output), "--masks", str(masks), *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree)}
    res = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    return Run(res.returncode, lines[-1] if lines else "", output, masks)


def stored_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor a model stores, by name: initializers (sparse ones densified) and the
    values of Constant nodes (some exporters keep weights there)."""
    model = onnx.load(str(path))
    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for s in model.graph.sparse_initializer:
        dense = np.zeros(tuple(s.dims), numpy_helper.to_array(s.values).dtype)
        idx = numpy_helper.to_array(s.indices)
        flat = idx if idx.ndim == 1 else np.ravel_multi_index(tuple(idx.T), dense.shape)
        dense.reshape(-1)[flat] = numpy_helper.to_array(s.values)
        found[s.values.name] = dense
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    found[node.output[0]] = numpy_helper.to_array(a.t)
    return found


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def compare_masks(a: Path, b: Path) -> str:
    """'same', or how many mask keys differ (keys missing on one side count as differing)."""
    with np.load(a) as x, np.load(b) as y:
        keys = set(x.files) | set(y.files)
        diff = [
            k
            for k in sorted(keys)
            if k not in x.files or k not in y.files or not np.array_equal(x[k], y[k])
        ]
    return "same" if not diff else f"{len(diff)}/{len(keys)} differ"


def compare_weights(a: Path, b: Path) -> str:
    x, y = stored_tensors(a), stored_tensors(b)
    names = set(x) | set(y)
    diff = [n for n in names if n not in x or n not in y or not same_bits(x[n], y[n])]
    return "same" if not diff else f"{len(diff)}/{len(names)} differ"


def file_bytes(path: Path) -> bytes:
    data = path.with_name(path.name + ".data")
    return path.read_bytes() + (data.read_bytes() if data.exists() else b"")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", required=True, help="git ref to compare with (e.g. a release)")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.9, 0.99])
    ap.add_argument("--iterations", type=int, default=20, help="[20: a few minutes on 2 cores]")
    ap.add_argument(
        "--head-args",
        default="",
        help="options for this tree only, e.g. '--zero-init strict' to see whether a "
        "difference comes from a new default",
    )
    ap.add_argument("--jobs", type=int, default=2, help="prunes run at once")
    ap.add_argument("--only", nargs="+", default=None, help="models whose path contains one")
    ap.add_argument("--keep", type=Path, default=None, help="keep the outputs in this folder")
    args = ap.parse_args()

    models = committed_models()
    if args.only:
        models = [m for m in models if any(s in m.as_posix() for s in args.only)]
    work = Path(tempfile.mkdtemp(prefix="onnxflow-compare-"))
    ref_tree = work / "ref"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-q", str(ref_tree), args.ref],
        cwd=ROOT,
        check=True,
    )
    start = time.perf_counter()
    try:
        jobs = [(m, s) for m in models for s in args.sparsity]
        extra = shlex.split(args.head_args)

        def both(job: tuple[Path, float]) -> tuple[Run, Run]:
            model, sparsity = job
            tag = f"{model.relative_to(ROOT).as_posix().replace('/', '__')}@{sparsity}"
            ref = prune(ref_tree, model, sparsity, args.iterations, work / "out" / "ref" / tag, [])
            head = prune(ROOT, model, sparsity, args.iterations, work / "out" / "head" / tag, extra)
            return ref, head

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            results = list(pool.map(both, jobs))

        failed = False
        refused: list[str] = []
        print(
            f"ref {args.ref} vs this tree ({ROOT}); --iterations {args.iterations} "
            f"{args.head_args}".rstrip()
        )
        print(f"{'model':<48} {'sparsity':>8}  {'masks':<13} {'weights':<13} files")
        for (model, sparsity), (ref, head) in zip(jobs, results, strict=True):
            name = model.relative_to(ROOT).as_posix()
            if ref.code != 0:
                both_refuse = "both refuse" if head.code != 0 else "this tree prunes it"
                refused.append(f"{name} @ {sparsity}: {ref.error} ({both_refuse})")
                continue
            if head.code != 0:
                failed = True
                print(f"{name:<48} {sparsity:>8}  REFUSED HERE: {head.error}")
                continue
            masks = compare_masks(ref.masks, head.masks)
            weights = compare_weights(ref.output, head.output)
            same_file = file_bytes(ref.output) == file_bytes(head.output)
            failed |= masks != "same" or weights != "same"
            files = "identical" if same_file else "differ"
            print(f"{name:<48} {sparsity:>8}  {masks:<13} {weights:<13} {files}")
        if refused:
            print(f"\nrefused by {args.ref} (not compared):")
            for line in refused:
                print(f"  {line}")
        print(f"\n{len(jobs)} prunes per side in {time.perf_counter() - start:.0f} s")
        print("masks or weights DIFFER" if failed else "masks and weights identical")
        if args.keep is not None:
            shutil.copytree(work / "out", args.keep, dirs_exist_ok=True)
        return 1 if failed else 0
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(ref_tree)], cwd=ROOT, check=False
        )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
