"""The CLI's output end to end: header, excluded layers, warnings, the files listed, help,
the loading line, and `| head` (exit 0)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import netgen
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxflow.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def plain_console(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR", "COLUMNS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    m = netgen.tiny_cnn(seed=1)
    m.ir_version = min(m.ir_version, 10)
    onnx.save(m, tmp_path / "tiny.onnx")
    return tmp_path / "tiny.onnx"


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_method_excluded_layers_unmatched_exclude_and_written_files(
    capsys: pytest.CaptureFixture[str], model: Path
) -> None:
    names = netgen.prunable_weight_names(onnx.load(model))
    code, out, err = run(
        capsys, "prune", model, "--sparsity", 0.9, "--iterations", 2, "--method", "magnitude",
        "--exclude", names[0], "--exclude", "no_such_layer*", "--masks", model.with_name("m.npz"),
        "--report", model.with_name("r.json"),
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"magnitude pruning -> {model.with_name('tiny.pruned.onnx')}")
    assert "SynFlow" not in out
    assert any(names[0] in line and "excluded" in line for line in lines)
    assert f"wrote {model.with_name('tiny.pruned.onnx')}, {model.with_name('m.npz')}, " in out
    assert "FLOPs with a sparse kernel" in out
    assert err.count("warning:") == 1 and "'no_such_layer*'" in err
    table = lines[1 : next(i for i, line in enumerate(lines) if line.startswith("total")) + 1]
    assert max(len(line.rstrip()) for line in table) <= 80


def test_inspect_warns_about_an_empty_layer(
    capsys: pytest.CaptureFixture[str], model: Path
) -> None:
    m = onnx.load(model)
    name = netgen.prunable_weight_names(m)[1]
    for t in m.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(t)), name))
    onnx.save(m, model)
    code, _, err = run(capsys, "inspect", model)
    assert code == 0
    assert "1 layer already all zeros" in err and name in err
    assert err.count("\n") == 1


def test_bare_onnxflow_prints_help_without_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "onnxflow.cli"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False,
    )  # fmt: skip
    assert proc.returncode == 0
    assert proc.stdout.startswith("Usage: onnxflow") and "error" not in proc.stdout + proc.stderr


def test_loading_is_shown_before_the_first_iteration_and_the_bar_has_an_eta(
    capsys: pytest.CaptureFixture[str], model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats the captured stream as a terminal
    code, _, err = run(capsys, "prune", model, "--sparsity", 0.5, "--iterations", 3)
    assert code == 0
    assert "loading tiny.onnx" in err and "pruning" in err and "ETA" in err
    assert err.index("loading") < err.index("pruning")


def test_stdout_closed_by_its_reader_exits_0(model: Path) -> None:
    """`onnxflow inspect m.onnx | head -0`: the reader leaves before the table is written."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxflow.cli", "inspect", str(model)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "error" not in err


def test_scores_are_stored_uncompressed_and_masks_compressed(
    capsys: pytest.CaptureFixture[str], model: Path
) -> None:
    """Deflating float64 scores took most of a large run for 13% of size (README)."""
    import zipfile

    scores, masks = model.with_name("s.npz"), model.with_name("m.npz")
    code, _, err = run(
        capsys, "prune", model, "--sparsity", 0.5, "--iterations", 2, "-q",
        "--scores", scores, "--masks", masks,
    )  # fmt: skip
    assert code == 0, err
    with zipfile.ZipFile(scores) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
    with zipfile.ZipFile(masks) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    with np.load(scores) as s, np.load(masks) as m:
        assert set(s.files) == set(m.files)
        assert all(s[k].dtype == np.float64 and s[k].shape == m[k].shape for k in s.files)


def test_wide_tables_have_exact_counts_and_every_column(
    capsys: pytest.CaptureFixture[str], model: Path
) -> None:
    code, out, _ = run(capsys, "prune", model, "--sparsity", 0.5, "--iterations", 1, "--wide")
    assert code == 0
    header = out.splitlines()[1].split()
    assert header == [
        "layer",
        "op",
        "shape",
        "params",
        "kept",
        "density",
        "FLOPs",
        "sparse",
        "FLOPs",
    ]
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    assert total[1:3] == ["1,488", "744"]
    code, out, _ = run(capsys, "inspect", model, "--wide")
    assert code == 0 and "fed by" in out.splitlines()[1] and "1,488" in out
