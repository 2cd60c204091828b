"""What the CLI prints: the prune and inspect tables, the summary lines and warnings.

Kept apart from cli.py (which parses options) so that the look of the output can be tested
without running a model. The default tables fit an 80-column terminal with full layer names
and uncut numbers: counts are written compactly (`1.05M`), and the columns a person rarely
needs (shape, FLOPs, "fed by") are behind `--wide`; `--report`/`--json` keep every figure
exact.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from onnxflow.report import Report
from onnxflow.rows import LayerRow, Totals

if TYPE_CHECKING:
    from onnxflow.channels.report import ChannelReport
    from onnxflow.inspect import Inspection, MissingRule

METHOD_LABELS = {"synflow": "SynFlow", "magnitude": "magnitude", "random": "random"}


def compact(n: float) -> str:
    """A count in at most 5 characters, 3 significant digits: 1048576 -> '1.05M'.

    Counts below 10,000 are written exactly (9408): a layer's size is often recognizable."""
    if n < 10_000:
        return f"{n:.0f}"
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size * 0.9995:
            value = n / size
            digits = 2 if value < 10 else 1 if value < 100 else 0
            return f"{value:.{digits}f}{unit}"
    return str(n)  # pragma: no cover - unreachable


def percent(fraction: float) -> str:
    """Density as a percentage with 3 significant digits for small ones: 0.000123 ->
    '0.0123%', never rounded to a misleading 0.00% or 100.00%."""
    p = 100.0 * fraction
    if p == 0 or p == 100:
        return f"{p:.0f}%"
    if p >= 99.995:
        return "<100%"
    if p >= 1:
        return f"{p:.2f}%"
    return f"{p:.3g}%"


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 prunable weight', '2 prunable weights'."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def _table(title: str, columns: Sequence[str], left: Iterable[str]) -> Group:
    """A compact table under its title: no vertical rules, one space between columns; the
    layer column folds (never cuts) names too long for the terminal, the others never wrap.
    The title is a line of its own, left to the terminal to wrap (a long output path)."""
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
    )
    lefts = set(left)
    for i, col in enumerate(columns):
        table.add_column(
            col,
            justify="left" if col in lefts else "right",
            overflow="fold",
            no_wrap=i != 0,
        )
    return Group(Text(title, no_wrap=True, overflow="ignore"), table)


def method_label(report: Report) -> str:
    method = str(report.options.get("method", "synflow"))
    return METHOD_LABELS.get(method, method)


def layer_table(
    title: str,
    rows: Sequence[LayerRow],
    *,
    kept: str = "kept",
    wide: bool = False,
    excluded: Sequence[LayerRow] = (),
    fed_by: bool = False,
) -> Group:
    """The per-layer table of prune and inspect: one row per layer (`kept` names the count
    column), excluded layers after them, then the totals of the rows (`Totals`).
    `wide` adds the shape and FLOPs columns, and with `fed_by` the layers feeding each."""
    columns = ["layer", "op", "params", kept, "density"]
    if wide:
        columns[2:2] = ["shape"]
        columns += ["FLOPs", "sparse FLOPs"] + (["fed by"] if fed_by else [])
    titled = _table(title, columns, ("layer", "op", "shape", "fed by"))
    table = titled.renderables[1]
    assert isinstance(table, Table)
    count = (lambda n: f"{n:,}") if wide else compact

    def cells(row: LayerRow, kept: str, density: str) -> list[str]:
        out = [row.name, row.op, count(row.params), kept, density]
        if wide:
            out[2:2] = ["x".join(map(str, row.shape))]
            out += [compact(row.flops), compact(row.flops_kept)]
            out += [", ".join(row.fed_by) or "input"] if fed_by else []
        return out

    for row in rows:
        table.add_row(*cells(row, count(row.kept), percent(row.density)))
    if excluded:
        table.add_section()
        for row in excluded:
            table.add_row(*cells(row, "excluded", ""), style="dim")
    table.add_section()
    totals = Totals.of(rows)
    total = ["total", "", count(totals.params), count(totals.kept), percent(totals.density)]
    if wide:
        total[2:2] = [""]
        total += [compact(totals.flops), compact(totals.flops_kept)] + ([""] if fed_by else [])
    table.add_row(*total)
    return titled


def prune_table(report: Report, output: Path | str, *, wide: bool = False) -> Group:
    """The per-layer table of a pruning; excluded layers are listed after the pruned ones."""
    return layer_table(
        f"{method_label(report)} pruning -> {output}",
        report.layers,
        wide=wide,
        excluded=report.excluded,
    )


def prune_summary(report: Report, written: Mapping[str, Path] | None = None) -> list[str]:
    """The lines under the prune table: exact totals, the theoretical FLOPs, sizes, files."""
    c, weights = report.compression, plural(report.params, "prunable weight")
    sizes = f"file {report.bytes_before:,} -> {report.bytes_after:,} bytes"
    if report.bytes_after != report.bytes_after_dense:
        sizes += f" (sparse storage; dense {report.bytes_after_dense:,})"
    lines = [
        f"kept {report.kept:,} of {weights} ({percent(report.density)}, compression 10^{c:.2f})",
        # Theoretical: the pruned model runs dense, zeros and all (README).
        f"FLOPs with a sparse kernel (theoretical): {compact(report.flops)} -> "
        f"{compact(report.flops_kept)}",
        f"{sizes}, {report.seconds:.1f}s on {report.provider}",
    ]
    if written:
        lines.append("wrote " + ", ".join(f"{p}" for p in written.values()))
    return lines


def channel_table(report: ChannelReport, output: Path | str, *, wide: bool = False) -> Group:
    """Channel mode's per-layer table: each weight layer's weights before and kept in the
    compact model (the same rows and totals as weight mode's table)."""
    method = str((report.options or {}).get("method", "synflow"))
    label = METHOD_LABELS.get(method, method)
    return layer_table(f"{label} channel pruning -> {output}", report.layers, wide=wide)


def _ratio(before: float, after: float) -> str:
    return f" ({after / before:.3f}x)" if before else ""


def channel_summary(report: ChannelReport) -> list[str]:
    """The lines under channel mode's table, each within 80 columns: groups, the sparsity
    reached, the compact model's real sizes, latency, and the frozen groups by reason."""
    r, totals = report, report.totals
    share = r.prunable_weights / totals.params if totals.params else 0.0
    lines = [
        f"removed {r.removed_groups:,} of {plural(r.prunable_groups, 'prunable channel group')}"
        f" ({r.groups:,} in all)",
        f"removed {percent(r.removed_share)} of {plural(r.prunable_weights, 'prunable weight')}"
        f" ({percent(share)} of the weights)",
        f"parameters {compact(r.params_before)} -> {compact(r.params_after)}"
        f"{_ratio(r.params_before, r.params_after)}, FLOPs {compact(totals.flops)} -> "
        f"{compact(totals.flops_kept)}{_ratio(totals.flops, totals.flops_kept)}",
        f"file {r.bytes_before:,} -> {r.bytes_after:,} bytes, {r.seconds:.1f}s",
    ]
    if r.latency_before_ms is not None and r.latency_after_ms is not None and r.speedup:
        lines.append(
            f"latency {r.latency_before_ms:.2f} -> {r.latency_after_ms:.2f} ms: speedup "
            f"{r.speedup:.2f}x (onnxruntime CPU, medians)"
        )
    if r.frozen:
        lines += _fold("frozen groups: ", [f"{n:,} {why}" for why, n in r.frozen.items()])
    return lines


def _fold(head: str, items: Sequence[str], width: int = 80) -> list[str]:
    """`head` and the items joined by '; ', broken between items to stay within `width`
    (continuation lines indented under the first item); an item longer than a line stays
    whole."""
    lines, line = [], head
    for i, item in enumerate(items):
        piece = item + (";" if i < len(items) - 1 else "")
        if line.strip() and line != head and len(line) + len(piece) > width:
            lines.append(line.rstrip())
            line = " " * len(head)
        line += piece + " "
    lines.append(line.rstrip())
    return lines


def prune_warnings(report: Report) -> list[str]:
    out = list(report.notes)  # parts left dense or out of the flow, and why
    if report.exclude_unmatched:
        out.append(
            "--exclude matched no weight: "
            + ", ".join(repr(p) for p in report.exclude_unmatched)
            + " (patterns match initializer or node names, e.g. 'fc*' or '*.bias')"
        )
    if report.pattern_skipped:
        out.append(
            "--pattern skipped layers whose input channels do not split into groups: "
            + ", ".join(report.pattern_skipped)
        )
    if report.emptied:
        out.append(
            f"{plural(len(report.emptied), 'layer')} pruned to nothing (no signal passes "
            f"them; --min-kept keeps some weights in every layer): {', '.join(report.emptied)}"
        )
    return out


def inspect_table(rows: Sequence[LayerRow], model: Path | str, *, wide: bool) -> Group:
    """The per-layer table of `onnxflow inspect` (`Inspection.rows`)."""
    return layer_table(f"prunable weights of {model}", rows, kept="nonzero", wide=wide, fed_by=True)


def inspect_summary(rows: Sequence[LayerRow]) -> str:
    totals = Totals.of(rows)
    return (
        f"{plural(len(rows), 'prunable weight')}, {totals.params:,} parameters, "
        f"{totals.kept:,} nonzero"
    )


def inspect_warnings(inspection: Inspection) -> list[str]:
    """One line per op type without a rule (with a count and an example node), and one for
    the layers that are already all zeros."""
    out = list(inspection.notes)  # parts left dense or out of the flow, and why
    empty = [row.name for row in inspection.rows if row.kept == 0]
    if empty:
        out.append(
            f"{plural(len(empty), 'layer')} already all zeros (no signal passes them; "
            f"pruning keeps them empty): {', '.join(empty)}"
        )
    out += missing_rule_warnings(inspection.missing_rules)
    return out


def missing_rule_warnings(missing: Sequence[MissingRule]) -> list[str]:
    counts = Counter((m.op_type, m.domain) for m in missing)
    first: dict[tuple[str, str], str] = {}
    for m in missing:
        first.setdefault((m.op_type, m.domain), m.node)
    return [
        f"no flow rule for {op!r} (domain {dom or 'ai.onnx'!r}; {plural(n, 'node')}, e.g. "
        f"{first[op, dom]!r}); prune will refuse this model"
        for (op, dom), n in counts.items()
    ]


def stderr() -> Console:
    """Warnings on stderr, never hard-wrapped: a line stays one line in a log file."""
    return Console(stderr=True, soft_wrap=True)


def warn(console: Console, message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def prune_notes(report: Report) -> list[str]:
    """Informational lines: what the flow model read differently from the stored model."""
    if report.zero_init:
        return [f"{report.zero_init.summary()} (--zero-init strict: the paper's R)"]
    return []


def note(console: Console, message: str) -> None:
    console.print(f"note: {escape(message)}", highlight=False)


class _Stdout(Console):
    """rich ends the process with status 1 when stdout's reader leaves; `onnxflow ... | head`
    is no failure: the CLI turns the BrokenPipeError into exit status 0."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise BrokenPipeError


def stdout() -> Console:
    """Tables on stdout at the terminal's width; piped, wide enough never to fold a name
    (the default tables are only as wide as their content)."""
    console = _Stdout()
    return console if console.is_terminal else _Stdout(width=240)
