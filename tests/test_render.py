"""What the CLI prints: tables that fit 80 columns without cutting a name or a number, the
summary's wording, and the warnings' shape (tested on reports, without running a model)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from onnxflow import render
from onnxflow.inspect import MissingRule
from onnxflow.report import LayerReport, Report


def resnet50_layers() -> list[tuple[str, tuple[int, ...]]]:
    """torchvision ResNet-50's weight names and shapes (53 convolutions and the head)."""
    layers = [("conv1.weight", (64, 3, 7, 7))]
    cin = 64
    for stage, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), 1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            layers += [
                (f"{p}.conv1.weight", (width, cin, 1, 1)),
                (f"{p}.conv2.weight", (width, width, 3, 3)),
                (f"{p}.conv3.weight", (4 * width, width, 1, 1)),
            ]
            if b == 0:
                layers.append((f"{p}.downsample.0.weight", (4 * width, cin, 1, 1)))
            cin = 4 * width
    return [*layers, ("fc.weight", (1000, 2048))]


def resnet50_report(method: str = "synflow") -> Report:
    rng = np.random.default_rng(0)
    layers = []
    for name, shape in resnet50_layers():
        size = int(np.prod(shape))
        layers.append(
            LayerReport(
                name, [name], "Conv", list(shape), size, int(size * rng.uniform(0, 0.05)), 49
            )
        )
    return Report(layers, options={"method": method}, bytes_before=102_000_000)


def render_text(renderable: object, width: int = 80) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(renderable)
    return buf.getvalue()


def assert_fits_uncut(text: str, rows: list[list[str]]) -> None:
    lines = text.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert "…" not in text
    for cells in rows:  # each row's name and numbers, whole, on one line
        assert any(all(c in line for c in cells) for line in lines), cells


def test_prune_table_fits_80_columns_with_resnet50_names() -> None:
    report = resnet50_report()
    assert report.params == 25_502_912 and len(report.layers) == 54  # as in the issue
    text = render_text(render.prune_table(report, "resnet50.pruned.onnx"))
    rows = [
        [x.name, render.compact(x.params), render.compact(x.kept), render.percent(x.density)]
        for x in report.layers
    ]
    assert_fits_uncut(text, [*rows, ["total", render.compact(report.params)]])
    assert "25.5M" in text
    assert "SynFlow pruning" in text


def test_inspect_table_fits_80_columns_with_resnet50_names() -> None:
    rows = [
        dataclasses.replace(x, fed_by=["layer4.2.downsample.0.weight"] * 3)
        for x in resnet50_report().layers
    ]
    text = render_text(render.inspect_table(rows, "resnet50.onnx", wide=False))
    want = [[r.name, render.compact(r.params), render.compact(r.kept)] for r in rows]
    assert_fits_uncut(text, want)
    assert "fed by" not in text  # --wide only
    wide = render_text(render.inspect_table(rows, "resnet50.onnx", wide=True), width=400)
    assert "fed by" in wide and "2,359,296" in wide  # layer4 conv2: exact with --wide


def test_a_name_too_long_for_the_terminal_folds_but_is_never_cut() -> None:
    name = "encoder.layers.11.self_attention.output_projection.dense.weight_" * 2
    report = Report([LayerReport(name, [name], "MatMul", [64, 64], 4096, 40, 1)])
    text = render_text(render.prune_table(report, "m.onnx"))
    assert "…" not in text
    assert name in "".join(line.strip().split(" ")[0] for line in text.splitlines())


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0"), (9408, "9408"), (10_000, "10.0k"), (1_048_576, "1.05M"), (25_502_912, "25.5M"),
     (999_999, "1.00M"), (123_456_789, "123M"), (4.1e9, "4.10G")],
)  # fmt: skip
def test_compact_counts(n: float, text: str) -> None:
    assert render.compact(n) == text


def test_percent_is_never_rounded_to_nothing_or_everything() -> None:
    assert render.percent(0.0) == "0%" and render.percent(1.0) == "100%"
    assert render.percent(1.2e-6) == "0.00012%"
    assert render.percent(0.99999) == "<100%"
    assert render.percent(0.0123) == "1.23%"


@pytest.mark.parametrize(
    ("method", "label"), [("synflow", "SynFlow"), ("magnitude", "magnitude"), ("random", "random")]
)
def test_header_names_the_method(method: str, label: str) -> None:
    text = render_text(render.prune_table(resnet50_report(method), "out.onnx"))
    assert text.splitlines()[0].startswith(f"{label} pruning -> out.onnx")
    assert ("SynFlow" in text) == (method == "synflow")


def test_excluded_layers_stay_in_the_table_marked_excluded() -> None:
    report = resnet50_report()
    fc = report.layers[-1]
    report = Report(report.layers[:-1], excluded=[fc])
    text = render_text(render.prune_table(report, "o.onnx"))
    assert any("fc.weight" in line and "excluded" in line for line in text.splitlines())
    assert report.params == 25_502_912 - fc.params  # the totals leave the excluded layer out


def test_summary_counts_are_exact_singular_and_list_the_files() -> None:
    one = LayerReport("w", ["n"], "Gemm", [3, 4], 12, 1, 1)
    report = Report([one], options={"method": "magnitude"})
    lines = render.prune_summary(report, {"output": Path("o.onnx"), "masks": Path("m.npz")})
    assert "1 prunable weight" not in lines[0]  # 12 weights
    assert lines[0] == "kept 1 of 12 prunable weights (8.33%, compression 10^1.08)"
    assert "FLOPs with a sparse kernel (theoretical" in lines[1]
    assert lines[-1] == "wrote o.onnx, m.npz"
    rows = [dataclasses.replace(one, kept=3)]
    assert render.inspect_summary(rows) == "1 prunable weight, 12 parameters, 3 nonzero"
    assert render.inspect_summary(rows * 2).startswith("2 prunable weights, 24 parameters, ")


def test_missing_rules_are_one_line_per_op_type_with_a_count_and_an_example() -> None:
    missing = [MissingRule("Round", "", f"round_{i}") for i in range(5)]
    missing.append(MissingRule("Mystery", "com.example", "m0"))
    lines = render.missing_rule_warnings(missing)
    assert lines == [
        "no flow rule for 'Round' (domain 'ai.onnx'; 5 nodes, e.g. 'round_0'); "
        "prune will refuse this model",
        "no flow rule for 'Mystery' (domain 'com.example'; 1 node, e.g. 'm0'); "
        "prune will refuse this model",
    ]


def test_warnings_to_a_file_are_not_wrapped() -> None:
    report = Report([LayerReport(f"layer{i}.weight", [], "Conv", [8], 8, 0) for i in range(30)])
    (message,) = render.prune_warnings(report)
    buf = io.StringIO()
    console = Console(file=buf, soft_wrap=True, color_system=None)  # not a terminal: width 80
    render.warn(console, message)
    out = buf.getvalue()
    assert out.count("\n") == 1 and len(out) > 300
    assert out.startswith("warning: 30 layers pruned to nothing")
    # Names with brackets print as they are (no rich markup).
    buf = io.StringIO()
    (unmatched,) = render.prune_warnings(Report([], exclude_unmatched=["[bold]x"]))
    render.warn(Console(file=buf, soft_wrap=True, color_system=None), unmatched)
    assert "'[bold]x'" in buf.getvalue()
