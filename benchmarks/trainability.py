"""Benchmark: do the pruned networks still train? SynFlow against magnitude and random pruning.

The paper's claim (Tanaka et al. 2020) is that networks pruned at initialization by iterative
SynFlow still train at compressions where magnitude and random pruning collapse. This runs
the whole user loop on a small CNN and scikit-learn's bundled digits data set (8x8 images,
10 classes, nothing downloaded):

  initialize (seeded) -> export to ONNX (TorchScript) -> prune with onnxflow at compression
  10^c (synflow: 100 iterations; magnitude, random: one shot, as in the paper) -> map the
  masks back with onnxflow.map_masks -> apply them with torch.nn.utils.prune -> train with
  the masks fixed -> test accuracy,

for c in 0.5, 1, ..., 3 and several seeds, plus the dense network. Prints a Markdown table,
writes every run as JSON and draws a PNG.

    python benchmarks/trainability.py [--seeds 2] [--epochs 30] [--png FILE] [--json FILE]

Needs PyTorch, scikit-learn and matplotlib (optional, like the other benchmarks: without
them it says so and stops).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import onnxflow

COMPRESSIONS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
METHODS = ("synflow", "magnitude", "random")
ITERATIONS = {"synflow": 100, "magnitude": 1, "random": 1}


def need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        sys.exit(f"benchmarks/trainability.py needs {module} (pip install torch scikit-learn)")


def data() -> tuple[Any, Any, Any, Any]:
    """Digits as float tensors in [0, 1], a fixed stratified 80/20 split."""
    torch = need("torch")
    datasets = need("sklearn.datasets")
    from sklearn.model_selection import train_test_split

    x, y = datasets.load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return (torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
            torch.from_numpy(yte))  # fmt: skip


def make_net() -> Any:
    """A small CNN: 31,632 prunable weights in five layers (small enough to train 39 times
    on two shared CPU cores)."""
    nn = need("torch").nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


def export(net: Any, path: Path) -> None:
    torch = need("torch")
    torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False,
                      opset_version=17, do_constant_folding=False)  # fmt: skip
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, 10)
    onnx.save(proto, str(path))


def train(net: Any, split: tuple[Any, Any, Any, Any], epochs: int, seed: int) -> float:
    """Adam, batch 64, fixed epochs; returns the test accuracy."""
    torch = need("torch")
    xtr, ytr, xte, yte = split
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            loss_fn(net(xtr[idx]), ytr[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return float((net(xte).argmax(1) == yte).float().mean())


def run_seed(seed: int, epochs: int, split: tuple[Any, Any, Any, Any]) -> list[dict[str, Any]]:
    torch = need("torch")
    prune_api = need("torch.nn.utils.prune")
    torch.manual_seed(seed)
    init = make_net().eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.onnx"
        export(init, path)
        dense = copy.deepcopy(init)
        params = sum(p.numel() for n, p in init.named_parameters() if n.endswith("weight"))
        rows.append({"seed": seed, "method": "dense", "compression": 0.0, "kept": params,
                     "emptied": 0, "accuracy": train(dense, split, epochs, seed)})  # fmt: skip
        for method in METHODS:
            for c in COMPRESSIONS:
                t0 = time.perf_counter()
                result = onnxflow.prune(path, compression=c, method=method,
                                        iterations=ITERATIONS[method], seed=seed)  # fmt: skip
                masks = onnxflow.map_masks(result.masks, path, init.state_dict())
                net = copy.deepcopy(init)
                for name, mask in masks.items():
                    module, param = name.rsplit(".", 1)
                    prune_api.custom_from_mask(
                        net.get_submodule(module), param, torch.from_numpy(mask)
                    )
                acc = train(net, split, epochs, seed)
                rows.append({"seed": seed, "method": method, "compression": c,
                             "kept": result.report.kept, "emptied": len(result.report.emptied),
                             "accuracy": acc})  # fmt: skip
                took = time.perf_counter() - t0
                print(f"seed {seed} {method:9s} 10^{c:.1f}: kept {result.report.kept:6d}, "
                      f"{len(result.report.emptied)} layers emptied, accuracy {acc:.3f} "
                      f"({took:.1f}s)", file=sys.stderr, flush=True)  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def cell(sel: list[dict[str, Any]]) -> str:
        accs = [r["accuracy"] for r in sel]
        return f"{100 * statistics.mean(accs):.1f} ({100 * min(accs):.1f}-{100 * max(accs):.1f})"

    dense = [r for r in rows if r["method"] == "dense"]
    kept = {r["compression"]: r["kept"] for r in rows if r["method"] == "synflow"}
    lines = [
        "| compression | weights kept | " + " | ".join(METHODS) + " |",
        "|---|---|" + "---|" * len(METHODS),
        f"| dense (10^0) | {dense[0]['kept']:,} | {cell(dense)} |" + " |" * (len(METHODS) - 1),
    ]
    for c in COMPRESSIONS:
        cells = [cell([r for r in rows if r["method"] == m and r["compression"] == c])
                 for m in METHODS]  # fmt: skip
        lines.append(f"| 10^{c:g} | {kept[c]:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    dense = [r["accuracy"] for r in rows if r["method"] == "dense"]
    ax.axhline(100 * statistics.mean(dense), color="gray", ls="--", lw=1, label="dense")
    for method, color in zip(METHODS, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        means, lo, hi = [], [], []
        for c in COMPRESSIONS:
            accs = [100 * r["accuracy"] for r in rows
                    if r["method"] == method and r["compression"] == c]  # fmt: skip
            means.append(statistics.mean(accs))
            lo.append(means[-1] - min(accs))
            hi.append(max(accs) - means[-1])
        ax.errorbar(COMPRESSIONS, means, yerr=[lo, hi], marker="o", ms=4, capsize=3,
                    color=color, label=method)  # fmt: skip
    ax.set_xlabel("compression (log10 of weights / kept)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("small CNN on digits, pruned at init, trained with masks fixed", fontsize=9)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--png", type=Path, default=Path("docs/trainability.png"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch = need("torch")
    torch.set_num_threads(1)  # small tensors: threads cost more than they give
    split = data()
    rows = [r for seed in range(args.seeds) for r in run_seed(seed, args.epochs, split)]
    print(f"test accuracy (%) after {args.epochs} epochs, mean (min-max) over "
          f"{args.seeds} seeds:\n")  # fmt: skip
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, args.png)


if __name__ == "__main__":
    main()
