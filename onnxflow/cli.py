"""The `onnxflow` command: parses options, calls the Python API, prints progress and a table.

Exit codes: 0 success; 2 any problem with the input or options (one line on stderr, nothing
written); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from onnxflow import api, render
from onnxflow.errors import OnnxflowError, Opt, one_line
from onnxflow.inspect import inspect_model
from onnxflow.options import (
    DEFAULTS,
    GRANULARITIES,
    METHODS,
    PROVIDERS,
    RANKINGS,
    SCHEDULES,
    SCOPES,
    ZERO_INITS,
)
from onnxflow.plot import density_figure, png_writer, require_matplotlib
from onnxflow.report import Report
from onnxflow.save import check_output_paths, write_atomically


def _dims(shape: object) -> str:
    return "x".join(map(str, shape))  # type: ignore[call-overload]


def _shapes(value: object) -> str:
    return " ".join(f"{k}={_dims(v)}" for k, v in dict(value).items())  # type: ignore[call-overload]


def _pattern(value: object) -> str:
    return ":".join(map(str, value))  # type: ignore[call-overload]


# The one table from the library's fields (errors name options by field, `Opt`) to this
# command's flags, with how a value is written on the command line (None: the flag alone).
# A field not listed here (`sparsity`, `iterations`, `output`) is printed as it is.
FLAGS: dict[str, tuple[str, Callable[[object], str] | None]] = {
    "input_shapes": ("--input-shape", _shapes),
    "pattern": ("--pattern", _pattern),
    "provider": ("--provider", str),
    "schedule": ("--schedule", str),
    "scope": ("--scope", str),
    "method": ("--method", str),
    "zero_init": ("--zero-init", str),
    "min_kept": ("--min-kept", str),
    "exclude": ("--exclude", None),
    "masks": ("--masks", None),
    "scores": ("--scores", None),
    "report": ("--report", None),
    "plot": ("--plot", None),
    "channels": ("--channels", None),
    "channel_multiple": ("--channel-multiple", str),
    "ranking": ("--ranking", str),
    "sparse_storage": ("--sparse-storage", None),
}


def flag(opt: Opt) -> str:
    """An option as this command spells it: `pattern=(2, 4)` -> `--pattern 2:4`."""
    if opt.field not in FLAGS:
        return str(opt)
    name, show = FLAGS[opt.field]
    return f"{name} {show(opt.value)}" if show is not None and opt.has_value else name


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse `NAME=1x3x224x224` (--input-shape)."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name or not dims:
        raise OnnxflowError(f"--input-shape must look like NAME=1x3x224x224, got {text!r}")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise OnnxflowError(
            f"--input-shape {text!r}: dimensions must be positive integers separated by 'x'"
        ) from None
    if not shape or any(d < 1 for d in shape):
        raise OnnxflowError(f"--input-shape {text!r}: dimensions must be positive integers")
    return name, shape


def parse_channel_multiple(text: str) -> int | str:
    """`--channel-multiple K|auto`: an integer (checked >= 1 by the library) or `auto`."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise OnnxflowError(
            f"--channel-multiple must be an integer >= 1 or 'auto', got {text!r}"
        ) from None


def parse_pattern(text: str) -> tuple[int, int]:
    """Parse `N:M` (--pattern)."""
    n, sep, m = text.partition(":")
    try:
        if not sep:
            raise ValueError
        pattern = (int(n), int(m))
    except ValueError:
        raise OnnxflowError(f"--pattern must look like N:M (e.g. 2:4), got {text!r}") from None
    if not (1 <= pattern[0] < pattern[1]):
        raise OnnxflowError(f"--pattern {text!r}: need integers 1 <= N < M (e.g. 2:4)")
    return pattern


input_shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=1x3x224x224",
    help="Shape of an input with dynamic dimensions (repeatable).",
)
wide_option = click.option(
    "--wide",
    is_flag=True,
    help="Table with every column (shape, FLOPs) and exact counts; wider than 80 columns.",
)


class _ReaderGone(Exception):
    """stdout's reader closed the pipe (`onnxflow ... | head`): not an error."""


class _Group(click.Group):
    """Turns a broken stdout pipe into `_ReaderGone` before click's own handler, which
    would exit with status 1, sees it."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as e:
            raise _ReaderGone from e


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxflow")
def cli() -> None:
    """onnxflow: prune any ONNX model with SynFlow, without data."""


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Pruned model path [default: <stem>.pruned.onnx beside MODEL].",
)
@click.option("--sparsity", type=float, help="Fraction of prunable weights to zero, in [0, 1).")
@click.option("--compression", type=float, help="Keep 10^-C of the prunable weights.")
@click.option(
    "--iterations",
    type=int,
    default=DEFAULTS.iterations,
    show_default=True,
    help="Rounds of scoring and pruning.",
)
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default=DEFAULTS.schedule,
    show_default=True,
    help="How the kept fraction shrinks over the rounds.",
)
@click.option(
    "--scope",
    type=click.Choice(SCOPES),
    default=DEFAULTS.scope,
    show_default=True,
    help="One threshold for all layers, or the same fraction each.",
)
@input_shape_option
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default=DEFAULTS.method,
    show_default=True,
    help="Scores: SynFlow, or the baselines |W| and seeded random.",
)
@click.option(
    "--seed", type=int, default=DEFAULTS.seed, show_default=True, help="Seed of --method random."
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Never prune weights whose initializer or node name matches (repeatable).",
)
@click.option(
    "--min-kept",
    type=int,
    default=DEFAULTS.min_kept,
    show_default=True,
    help="Every layer keeps at least this many weights.",
)
@click.option(
    "--pattern",
    metavar="N:M",
    help="N:M sparsity: keep at most N of every M consecutive weights along the input "
    "channels (e.g. 2:4). Alone, it sets the target; with --sparsity, prunes further.",
)
@click.option(
    "--sparse-storage",
    is_flag=True,
    help="Store pruned weights as ONNX sparse initializers (COO): a smaller file; "
    "onnxruntime expands them to dense when it loads the model.",
)
@click.option(
    "--zero-init",
    type=click.Choice(ZERO_INITS),
    default=DEFAULTS.zero_init,
    show_default=True,
    help="Zero-initialized parameters (all-zero weight tensors, normalization or layer "
    "scales): 'ones' lets flow cross them as ones (all-zero weights are then not pruned); "
    "'strict' keeps the paper's R, which they can make 0.",
)
@click.option("--masks", type=click.Path(path_type=Path), help="Write boolean masks (.npz).")
@click.option(
    "--scores",
    type=click.Path(path_type=Path),
    help="Write the dense network's log-scores (.npz, float64 natural logs).",
)
@click.option("--report", type=click.Path(path_type=Path), help="Write the report (.json).")
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    metavar="FILE.png",
    help="Draw density per layer (.png; needs the 'plot' extra: matplotlib).",
)
@click.option(
    "--provider",
    type=click.Choice(PROVIDERS),
    default=DEFAULTS.provider,
    show_default=True,
    help="onnxruntime device for the flow computation.",
)
@click.option(
    "--granularity",
    type=click.Choice(GRANULARITIES),
    default="weight",
    show_default=True,
    help="Zero single weights, or remove whole channels (a smaller dense model).",
)
@click.option(
    "--channels",
    type=click.Path(path_type=Path),
    metavar="FILE.json",
    help="Channel mode: write every channel group, its members, score and fate.",
)
@click.option(
    "--channel-multiple",
    metavar="K|auto",
    help="Channel mode: keep channel counts multiples of K where a group allows; "
    "default auto: counts above 16 stay multiples of 16, free below (what onnxruntime's "
    "CPU convolution kernels take: blocks of 16 channels on AVX-512, 8 on AVX2).",
)
@click.option(
    "--latency", is_flag=True, help="Channel mode: time both models in onnxruntime (CPU)."
)
@click.option(
    "--ranking",
    type=click.Choice(RANKINGS),
    help="Channel mode: rank groups by their flow per FLOP they cost (default), their flow, "
    "or their flow per weight.",
)
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No progress bar and no summary table (warnings still print).",
)
@wide_option
def prune(
    model: Path,
    output: Path | None,
    sparsity: float | None,
    compression: float | None,
    iterations: int,
    schedule: str,
    scope: str,
    input_shapes: tuple[str, ...],
    method: str,
    seed: int,
    exclude: tuple[str, ...],
    min_kept: int,
    pattern: str | None,
    sparse_storage: bool,
    zero_init: str,
    masks: Path | None,
    scores: Path | None,
    report: Path | None,
    plot: Path | None,
    provider: str,
    granularity: str,
    channels: Path | None,
    channel_multiple: str | None,
    latency: bool,
    ranking: str | None,
    quiet: bool,
    wide: bool,
) -> None:
    """Prune MODEL with iterative SynFlow and write the pruned model.

    Exactly one of --sparsity or --compression is required, unless --pattern sets the target.
    """
    if sparsity is not None and compression is not None:
        raise OnnxflowError("give exactly one of --sparsity or --compression")
    if sparsity is None and compression is None and pattern is None:
        raise OnnxflowError("give exactly one of --sparsity or --compression (or a --pattern)")
    options = api.make_options(
        sparsity=sparsity,
        compression=compression,
        iterations=iterations,
        schedule=schedule,
        scope=scope,
        provider=provider,
        method=method,
        seed=seed,
        exclude=exclude,
        min_kept=min_kept,
        pattern=parse_pattern(pattern) if pattern is not None else None,
        sparse_storage=sparse_storage,
        zero_init=zero_init,
        input_shapes=dict(parse_input_shape(s) for s in input_shapes),
    )
    output = output or api.default_output(model)
    if granularity == "channel":
        from onnxflow.channels.command import prune_command
        from onnxflow.channels.score import DEFAULT_RANKING

        weight_only = [
            field for field, given in (("scores", scores), ("plot", plot)) if given is not None
        ]
        prune_command(
            model, output, options, latency=latency, masks=masks, report=report,
            channels=channels, weight_only=weight_only, quiet=quiet, wide=wide,
            ranking=ranking or DEFAULT_RANKING,
            channel_multiple=(
                "auto" if channel_multiple is None else parse_channel_multiple(channel_multiple)
            ),
        )  # fmt: skip
        return
    if channels is not None or channel_multiple is not None or latency or ranking is not None:
        raise OnnxflowError(
            "--channels, --channel-multiple, --latency and --ranking need --granularity channel"
        )
    check_output_paths(model, api.output_paths(output, masks, scores, report, plot))
    if plot is not None:
        require_matplotlib()
    console = render.stderr()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    ) as bar:
        # Loading and analysing a large model takes seconds before the first iteration.
        task = bar.add_task(f"loading {model.name}", total=None)
        result = api.prune(
            model,
            options,
            progress=lambda done, total: bar.update(
                task, description="pruning", total=total, completed=done
            ),
            keep_scores=scores is not None,
        )
    written = api.save(
        result, output, masks=masks, scores=scores, report=report, plot=plot, source=model
    )
    _print_summary(result.report, output, written, quiet=quiet, wide=wide)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@wide_option
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    metavar="FILE.png",
    help="Draw current density per layer (.png; needs matplotlib).",
)
def inspect(
    model: Path, input_shapes: tuple[str, ...], as_json: bool, wide: bool, plot: Path | None
) -> None:
    """List MODEL's prunable weights and the ops that lack a flow rule, without pruning.

    Shows the weight-layer DAG (layer, op, params, current density; with --wide also the
    weight shape, FLOPs and the layers that feed it) and flags every op on the flow path
    without a rule.
    """
    if plot is not None:
        check_output_paths(model, {"plot": plot})
        require_matplotlib()
    result = inspect_model(model, input_shapes=dict(parse_input_shape(s) for s in input_shapes))
    rows, totals = result.rows, result.totals
    if plot is not None:
        fig = density_figure(
            rows,
            f"{model.name}: density per layer, {totals.kept:,} of {totals.params:,} weights "
            "nonzero",
        )
        write_atomically({plot: png_writer(fig)})
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    out = render.stdout()
    out.print(render.inspect_table(rows, model, wide=wide))
    out.print(render.inspect_summary(rows), highlight=False)
    err = render.stderr()
    for message in render.inspect_warnings(result):
        render.warn(err, message)


def _print_summary(
    report: Report,
    output: Path,
    written: dict[str, Path] | None = None,
    *,
    quiet: bool = False,
    wide: bool = False,
) -> None:
    """The table and summary lines on stdout (unless quiet), the warnings on stderr."""
    if not quiet:
        out = render.stdout()
        out.print(render.prune_table(report, output, wide=wide))
        for line in render.prune_summary(report, written):
            out.print(line, highlight=False, soft_wrap=True)
    err = render.stderr()
    for message in render.prune_warnings(report):
        render.warn(err, message)
    for message in render.prune_notes(report):
        render.note(err, message)


_si = render.compact  # the former name, for code that imported it


def main(argv: list[str] | None = None) -> int:
    """Console entry point: every failure becomes one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if not (sys.argv[1:] if argv is None else argv):  # bare `onnxflow`: help is no error
        click.echo(cli.get_help(click.Context(cli, info_name="onnxflow", **cli.context_settings)))
        return 0
    try:
        cli.main(args=argv, prog_name="onnxflow", standalone_mode=False)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return 2
    except OnnxflowError as e:
        click.echo(f"error: {e.render(flag)}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except _ReaderGone:
        # `onnxflow ... | head`: the reader has all it wants. Point stdout at /dev/null so
        # that the interpreter's final flush does not fail again.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - the user gets one line, never a traceback
        click.echo(f"error: internal error ({type(e).__name__}): {one_line(e)}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
