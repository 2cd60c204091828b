"""`onnxflow prune --granularity channel`: write the compact model and print what it buys.

cli.py parses the options and hands over here; this module writes the files (atomically,
together) and prints the summary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from onnxflow.channels.api import ChannelResult, check_channel_options, prune_channels
from onnxflow.channels.report import ChannelReport
from onnxflow.channels.score import DEFAULT_RANKING
from onnxflow.errors import OnnxflowError
from onnxflow.options import PruneOptions
from onnxflow.save import (
    Writer,
    check_output_paths,
    model_writer,
    npz_writer,
    text_writer,
    write_atomically,
)
from onnxflow.stages import ProgressCallback

WEIGHT_ONLY = ("--scores", "--plot", "--sparse-storage", "--min-kept", "--scope local")
"""Options of weight mode that have no meaning for whole channels (refused)."""


def save_channels(
    result: ChannelResult,
    output: str | os.PathLike[str],
    *,
    masks: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
    channels: str | os.PathLike[str] | None = None,
    source: str | os.PathLike[str] | None = None,
) -> None:
    """Write the compact model and the optional masks (.npz), report and groups (.json),
    all atomically: on failure none of them changes."""
    paths = {"output": Path(output)}
    for key, p in (("masks", masks), ("report", report), ("channels", channels)):
        if p is not None:
            paths[key] = Path(p)
    check_output_paths(source, paths)
    writers: dict[Path, Writer] = {paths["output"]: model_writer(result.model)}
    if masks is not None:
        writers[paths["masks"]] = npz_writer(result.masks)
    if report is not None:
        writers[paths["report"]] = text_writer(result.report.to_json())
    if channels is not None:
        writers[paths["channels"]] = text_writer(json.dumps(result.channels, indent=1))
    write_atomically(writers)


def prune_command(
    model: Path,
    output: Path,
    options: PruneOptions,
    *,
    channel_multiple: int,
    latency: bool,
    masks: Path | None,
    report: Path | None,
    channels: Path | None,
    weight_only: list[str],
    quiet: bool,
    progress: ProgressCallback | None = None,
    ranking: str = DEFAULT_RANKING,
) -> ChannelResult:
    """Check the options, prune, write, print."""
    if weight_only:
        raise OnnxflowError(f"{', '.join(weight_only)}: weight mode only, not with channel mode")
    check_channel_options(options, channel_multiple, ranking)
    paths = {"output": output, "masks": masks, "report": report, "channels": channels}
    check_output_paths(model, {k: v for k, v in paths.items() if v is not None})
    result = prune_channels(
        model,
        options,
        channel_multiple=channel_multiple,
        latency=latency,
        progress=progress,
        ranking=ranking,
    )
    save_channels(result, output, masks=masks, report=report, channels=channels, source=model)
    if not quiet:
        print_summary(result.report, output)
    return result


def _si(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def print_summary(r: ChannelReport, output: Path) -> None:
    console = Console() if Console().is_terminal else Console(width=200)
    table = Table(title=f"channel pruning -> {output}", title_justify="left")
    for col in ("", "before", "after", "ratio"):
        table.add_column(col, justify="left" if not col else "right")
    rows: list[tuple[str, float, float]] = [
        ("parameters", r.params_before, r.params_after),
        ("weights (Conv/Gemm/MatMul)", r.weights, r.weights_after),
        ("FLOPs", r.flops_before, r.flops_after),
        ("file bytes", r.bytes_before, r.bytes_after),
    ]
    if r.latency_before_ms is not None and r.latency_after_ms is not None:
        rows.append(("latency ms (median)", r.latency_before_ms, r.latency_after_ms))
    for label, a, b in rows:
        fmt = (lambda v: f"{v:.2f}") if label.startswith("latency") else _si
        table.add_row(label, fmt(a), fmt(b), f"{b / a:.3f}" if a else "")
    console.print(table)
    console.print(
        f"{r.removed_groups} of {r.prunable_groups} prunable channel groups removed "
        f"({r.groups} groups); {r.removed_share:.2%} of the {r.prunable_weights:,} prunable "
        f"weights ({r.prunable_weights / max(r.weights, 1):.1%} of all) removed; "
        f"{r.seconds:.1f}s"
    )
    if r.speedup is not None:
        console.print(f"speedup {r.speedup:.2f}x (onnxruntime CPU, alternated runs)")
    if r.frozen:
        why = "; ".join(f"{n} {reason}" for reason, n in r.frozen.items())
        console.print(f"frozen groups: {why}", soft_wrap=True)
