"""`onnxflow prune --granularity channel`: write the compact model and print what it buys.

cli.py parses the options and hands over here; this module writes the files (atomically,
together) and prints the summary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from onnxflow import render
from onnxflow.channels.api import ChannelResult, check_channel_options, prune_channels
from onnxflow.channels.report import ChannelReport
from onnxflow.channels.score import AUTO, DEFAULT_RANKING, Multiple
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
    channel_multiple: Multiple = AUTO,
    latency: bool,
    masks: Path | None,
    report: Path | None,
    channels: Path | None,
    weight_only: list[str],
    quiet: bool,
    progress: ProgressCallback | None = None,
    ranking: str = DEFAULT_RANKING,
    wide: bool = False,
) -> ChannelResult:
    """Check the options, prune, write, print. `weight_only`: weight-mode outputs asked
    for (fields: `scores`, `plot`), refused."""
    check_channel_options(options, channel_multiple, ranking, weight_only)
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
        print_summary(result.report, output, wide=wide)
    return result


def print_summary(r: ChannelReport, output: Path, *, wide: bool = False) -> None:
    """The per-layer table and the summary lines (render.py), within 80 columns."""
    out = render.stdout()
    out.print(render.channel_table(r, output, wide=wide))
    for line in render.channel_summary(r):
        out.print(line, highlight=False, soft_wrap=True)
