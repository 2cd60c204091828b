"""Channel groups across every torchvision classification model: which prune, the prunable
share of their weights, why groups are frozen, and whether the compact model computes what
the masked original computes.

Each model is built with random weights (`weights=None`; constant-valued tensors made
slightly random, see `untie`) and exported with the TorchScript
exporter (opset 17) at a small input (64x64; larger where the architecture needs it); the
export is cached under `--cache`. Then, in a child process per model (a crash or a timeout
costs one row): the channel analysis (groups, prunable weights, frozen groups by reason),
and a removal of half the prunable weights with *random* group scores (one step: it tests
tracing and the compact model, not SynFlow's ranking), the compact model checked against the
original with the masks applied (the same check `onnxflow prune --granularity channel` runs).

    PYTHONPATH=$PWD python benchmarks/channels_zoo.py [--models resnet18 ...] [--out F.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SKIPPED = {
    name: "among the largest classifiers: too heavy for this shared 2-core machine"
    for name in (
        "vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf", "regnet_x_32gf", "regnet_y_32gf",
        "convnext_large",
    )
}  # fmt: skip
SIZE = {"alexnet": 224, "inception_v3": 96, "vit_b_16": 224, "vit_b_32": 224, "maxvit_t": 224}
SIZE.update({f"vgg{n}{bn}": 224 for n in (11, 13, 16, 19) for bn in ("", "_bn")})
"""Input sizes where 64x64 does not work (fixed patch grids, MaxViT's partitions; Inception
v3's stem needs at least 75; AlexNet's and VGG's adaptive pooling to 6x6 and 7x7 exports
only from 224)."""
SPARSITY = 0.5


def all_models() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def untie(model: Any) -> None:
    """Make every constant-valued parameter and buffer (BatchNorm's ones and zeros, zero
    biases, ConvNeXt's 1e-6 layer scales) slightly random, as trained ones are. Exporters
    store equal tensors once, and a stored tensor shared by several layers couples their
    groups: at initialization that would tie, e.g., every 128-channel BatchNorm of a
    DenseNet into one set of 128 groups, which no trained model shows."""
    import torch

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point() and t.numel() > 1 and bool((t == t.flatten()[0]).all()):
                u = torch.rand(t.shape, generator=g) * 2 - 1
                t.add_(0.1 * t.abs() * u + 0.01 * u)


def export(name: str, path: Path) -> None:
    import onnx
    import torch
    import torchvision

    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"weights": None}
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = False
    model = torchvision.models.get_model(name, **kwargs).eval()
    untie(model)
    hw = SIZE.get(name, 64)
    tmp = path.with_suffix(".tmp")
    torch.onnx.export(
        model, (torch.randn(1, 3, hw, hw),), str(tmp), input_names=["input"],
        output_names=["logits"], opset_version=17, dynamo=False,
    )  # fmt: skip
    m = onnx.load(str(tmp))
    m.ir_version = 10
    onnx.save(m, str(path))
    tmp.unlink()


def weights_by_reason(cg: Any) -> dict[str, int]:
    """Weights of the frozen groups' slices by the group's first reason (a weight entry in
    a frozen in-slice and a frozen out-slice is counted under both; shares overlap)."""
    import math

    out: dict[str, int] = {}
    for g in cg.groups:
        if not g.frozen:
            continue
        n = 0
        for s in g.slices:
            if s.weight:
                shape = cg.shapes[s.tensor]
                n += len(s.index) * math.prod(d for i, d in enumerate(shape) if i != s.axis)
        out[g.frozen[0]] = out.get(g.frozen[0], 0) + n
    return out


def analyse_one(path: Path) -> dict[str, Any]:
    """The analysis, then a random removal of half the prunable weights and the check."""
    from onnxflow.channels.api import analyse, score_function
    from onnxflow.channels.materialize import check_equivalent, materialize
    from onnxflow.channels.score import Budget, select_groups
    from onnxflow.errors import OnnxflowError
    from onnxflow.options import PruneOptions
    from onnxflow.passes.apply_masks import apply_masks

    t0 = time.perf_counter()
    a = analyse(path, PruneOptions(sparsity=SPARSITY))
    cg = a.groups
    budget = Budget(cg)
    row: dict[str, Any] = {
        "groups": len(cg.groups),
        "prunable_groups": len(cg.prunable),
        "weights": a.dag.size,
        "prunable_weights": budget.total,
        "prunable_share": round(budget.total / a.dag.size, 4) if a.dag.size else 0.0,
        "frozen": cg.frozen_summary(),
        "frozen_weights": weights_by_reason(cg),
        "analysis_s": round(time.perf_counter() - t0, 1),
    }
    if not cg.prunable:
        row["status"] = "nothing prunable"
        return row
    t0 = time.perf_counter()
    base = a.base
    score = score_function(a, "random", 0, "CPUExecutionProvider")
    try:
        sel = select_groups(cg, score, SPARSITY, 1, "exponential")
        row["sparsity"] = SPARSITY
    except OnnxflowError:  # a sparsity removal cannot reach: half of it
        sel = select_groups(cg, score, SPARSITY / 2, 1, "exponential")
        row["sparsity"] = SPARSITY / 2
    masks = {n: m for n, m in cg.masks(sel.removed).items() if n in cg.weights}
    try:
        compact, _ = materialize(base.model, cg, sel.removed, base.source.base_dir)
        masked = apply_masks(base.model, masks, base.source.base_dir)
        shapes = {t.name: tuple(int(d) for d in t.shape) for t in base.graph.inputs}
        row["max_relative_difference"] = check_equivalent(masked, compact, shapes)
        row["status"] = "pruned"
    except OnnxflowError as e:
        row["status"] = "compact model failed"
        row["error"] = str(e)[:300]
    row["removed_groups"] = len(sel.removed)
    row["check_s"] = round(time.perf_counter() - t0, 1)
    return row


def child(name: str, cache: Path) -> dict[str, Any]:
    path = cache / f"{name}_{SIZE.get(name, 64)}.onnx"
    row: dict[str, Any] = {"input": SIZE.get(name, 64)}
    t0 = time.perf_counter()
    if not path.exists():
        import torch

        torch.set_num_threads(1)
        try:
            export(name, path)
        except Exception as e:  # noqa: BLE001 - record and go on
            return {**row, "status": "export failed", "error": " ".join(str(e).split())[:300]}
        row["export_s"] = round(time.perf_counter() - t0, 1)
    try:
        row.update(analyse_one(path))
    except Exception as e:  # noqa: BLE001 - record and go on to the next model
        row["status"] = "failed"
        row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    return row


PLAIN = (
    "alexnet", "vgg", "resnet", "resnext", "wide_resnet", "regnet", "mobilenet", "mnasnet",
    "efficientnet", "densenet", "squeezenet", "googlenet", "inception", "shufflenet",
)  # fmt: skip
"""Families counted as plain CNNs for the issue's target (convolutions, BatchNorm; not the
LayerNorm-based ConvNeXt or the transformers)."""


def markdown(results: dict[str, Any]) -> str:
    """The table of docs/channels.md from the JSON results."""
    rows = [
        "| model | plain CNN | status | weights | prunable | groups (prunable) | "
        "max rel. diff | frozen groups by reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(results):
        r = results[name]
        plain = "yes" if name.startswith(PLAIN) else ""
        if "weights" not in r:
            rows.append(f"| {name} | {plain} | {r['status']}: {r.get('error', '')} | | | | | |")
            continue
        frozen = "; ".join(f"{why} {n:,}" for why, n in r["frozen"].items())
        diff = r.get("max_relative_difference")
        status = r["status"] + (f" ({r['error']})" if "error" in r else "")
        rows.append(
            f"| {name} | {plain} | {status} | {r['weights'] / 1e6:.2f}M | "
            f"{100 * r['prunable_share']:.1f}% | {r['groups']:,} ({r['prunable_groups']:,}) | "
            f"{'' if diff is None else f'{diff:.1e}'} | {frozen} |"
        )
    return "\n".join(rows) + "\n"


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for p in ("torch", "torchvision", "onnx", "onnxruntime-gpu", "numpy"):
        with contextlib.suppress(Exception):  # not installed
            out[p] = version(p)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--models", nargs="+", help="default: every classification model")
    ap.add_argument("--out", type=Path, help="JSON results (merged into an existing file)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/onnxflow_channels_zoo"))
    ap.add_argument("--timeout", type=float, default=900, help="seconds per model")
    ap.add_argument("--markdown", action="store_true", help="print the table of --out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())["results"]), end="")
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(child(args.child, args.cache)))
        return
    names = args.models or all_models()
    doc: dict[str, Any] = {"meta": {}, "results": {}}
    if args.out is not None and args.out.exists():
        doc = json.loads(args.out.read_text())
    doc["meta"].update(
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        versions=versions(),
        sparsity=SPARSITY,
        scores="random (one step): checks tracing and the compact model",
    )
    for name in names:
        if name in SKIPPED:
            doc["results"][name] = {"status": "skipped", "error": SKIPPED[name]}
            if args.out is not None:
                args.out.write_text(json.dumps(doc, indent=1) + "\n")
            continue
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--child", name, "--cache", str(args.cache)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            lines = done.stdout.strip().splitlines()
            row = json.loads(lines[-1]) if done.returncode == 0 and lines else {
                "status": "crashed", "error": (done.stderr.strip().splitlines() or ["?"])[-1],
            }  # fmt: skip
        except subprocess.TimeoutExpired:
            row = {"status": "timeout", "error": f"over {args.timeout:.0f} s"}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        row["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        doc["results"][name] = row
        print(name, json.dumps(row), flush=True)
        if args.out is not None:
            args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
