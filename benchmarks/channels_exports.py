"""Channel mode over a folder of exports: `onnxflow prune --granularity channel` on each.

Runs the CLI (sparsity 0.5, 3 iterations) on every `<name>.<exporter>/model.onnx` under
`--work` (the export cache that `benchmarks/zoo.py` fills), each in its own process with a
timeout, and records per model: the exit status, the error line if any, the time, the share
of prunable weights removed and the largest relative difference between the compact model
and the masked original that the CLI measured (it fails above 1e-4). Needs no torch.

    python benchmarks/channels_exports.py [--work /tmp/onnxflow-zoo] [--only REGEX]
        [--exporter torchscript] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-c", "import sys, onnxflow.cli; sys.exit(onnxflow.cli.main())"]


def run_one(model: Path, timeout: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            *CLI, "prune", str(model), "-o", str(Path(tmp) / "compact.onnx"),
            "--granularity", "channel", "--sparsity", "0.5", "--iterations", "3",
            "--report", str(report), "-q",
        ]  # fmt: skip
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            code, err = done.returncode, done.stderr
        except subprocess.TimeoutExpired:
            code, err = None, f"timeout after {timeout:.0f} s"
        rec: dict[str, object] = {"exit": code, "seconds": round(time.perf_counter() - start, 1)}
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")] or err.splitlines()[-1:]
        if code != 0:
            rec["error"] = (lines[0] if lines else "")[:300]
        if report.exists():
            data = json.loads(report.read_text())
            rec["removed_share"] = data.get("removed_share")
            rec["max_relative_difference"] = data.get("max_relative_difference")
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/onnxflow-zoo")
    ap.add_argument("--only", help="regular expression on folder names")
    ap.add_argument("--exporter", default="torchscript")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", help="write the results as JSON")
    args = ap.parse_args()
    folders = sorted(Path(args.work).glob(f"*.{args.exporter}"))
    results = {}
    for folder in folders:
        model = folder / "model.onnx"
        if not model.exists() or (args.only and not re.search(args.only, folder.name)):
            continue
        results[folder.name] = rec = run_one(model, args.timeout)
        print(folder.name, json.dumps(rec), flush=True)
    ok = [r for r in results.values() if r["exit"] == 0]
    worst = max((float(r["max_relative_difference"] or 0) for r in ok), default=0.0)
    print(f"{len(ok)} of {len(results)} pruned in channel mode; worst difference {worst:.2g}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
