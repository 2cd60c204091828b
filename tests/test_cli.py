"""End-to-end tests of the `onnxflow` command through `onnxflow.cli.main(argv)`.

Success: the files written and their content. Failure: exit 2, one line on stderr, no
traceback, and nothing written or changed on disk. Two cases also run the installed console
script as a real subprocess.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import click
import netgen
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxflow
import onnxflow.api
from onnxflow.cli import main
from onnxflow.options import PruneOptions

# `onnxflow.save` is the function; these are the modules.
save_module = importlib.import_module("onnxflow.save")
runtime_module = importlib.import_module("onnxflow.runtime")
cli_module = importlib.import_module("onnxflow.cli")

ITERS = "3"
# -- helpers ---------------------------------------------------------------------------------


def write_model(path: Path, model: onnx.ModelProto) -> Path:
    model.ir_version = 10
    path.write_bytes(model.SerializeToString())
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`, with a checksum for files."""
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
        )
        for p in sorted(folder.rglob("*"))
    }


def temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(autouse=True)
def plain_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """No terminal forced by the environment: rich writes plain text to the captured streams."""
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "160")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder holding one small model, `tiny.onnx` (7 prunable layers, 1488 weights)."""
    write_model(tmp_path / "tiny.onnx", netgen.tiny_cnn(seed=1))
    return tmp_path


@pytest.fixture
def model(work: Path) -> Path:
    return work / "tiny.onnx"


# -- success ---------------------------------------------------------------------------------


def test_default_output_beside_the_input(
    capsys: pytest.CaptureFixture[str], work: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = model.read_bytes()
    monkeypatch.chdir(work.parent)
    code, out, _ = cli(
        capsys, "prune", f"{work.name}/tiny.onnx", "--sparsity", 0.9, "--iterations", ITERS
    )
    assert code == 0
    assert sorted(snapshot(work)) == ["tiny.onnx", "tiny.pruned.onnx"]
    assert model.read_bytes() == before
    pruned = onnx.load(work / "tiny.pruned.onnx")
    onnx.checker.check_model(pruned)
    expected = onnxflow.prune(model, sparsity=0.9, iterations=int(ITERS))
    assert pruned.SerializeToString() == expected.model.SerializeToString()
    # The summary table names every layer and the total.
    for name in netgen.prunable_weight_names(onnx.load(model)):
        assert name in out
    assert "total" in out and "1,488" in out and f"{expected.report.kept:,}" in out


def test_output_option(capsys: pytest.CaptureFixture[str], work: Path, model: Path) -> None:
    (work / "out").mkdir()
    code, _, _ = cli(
        capsys,
        "prune",
        model,
        "-o",
        work / "out" / "small.onnx",
        "--compression",
        1,
        "--iterations",
        ITERS,
        "-q",
    )
    assert code == 0
    assert sorted(snapshot(work)) == ["out", "out/small.onnx", "tiny.onnx"]
    pruned = onnx.load(work / "out" / "small.onnx")
    n = netgen.param_count(pruned, netgen.prunable_weight_names(pruned))
    nonzero = sum(
        int(np.count_nonzero(w))
        for name, w in weights(pruned).items()
        if name in netgen.prunable_weight_names(pruned)
    )
    assert nonzero <= round(n / 10)  # a kept weight may itself be 0.0, never more than kept


def test_masks_scores_report_files(
    capsys: pytest.CaptureFixture[str], work: Path, model: Path
) -> None:
    original = onnx.load(model)
    names = netgen.prunable_weight_names(original)
    shapes = {t.name: tuple(t.dims) for t in original.graph.initializer}
    code, _, _ = cli(
        capsys,
        "prune",
        model,
        "--sparsity",
        0.8,
        "--iterations",
        ITERS,
        "--scope",
        "local",
        "--schedule",
        "linear",
        "--masks",
        work / "m.npz",
        "--scores",
        work / "s.npz",
        "--report",
        work / "r.json",
    )
    assert code == 0
    with np.load(work / "m.npz") as f:
        masks = {k: f[k] for k in f.files}
    with np.load(work / "s.npz") as f:
        scores = {k: f[k] for k in f.files}
    report = json.loads((work / "r.json").read_text())

    assert sorted(masks) == sorted(names) == sorted(scores)
    for name in names:
        assert masks[name].dtype == np.bool_ and masks[name].shape == shapes[name]
        assert scores[name].dtype == np.float64 and scores[name].shape == shapes[name]
        assert not np.isnan(scores[name]).any()
    n = sum(m.size for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.2 * n)

    # The pruned model is the input with exactly the masked weights zeroed.
    pruned, dense = weights(onnx.load(work / "tiny.pruned.onnx")), weights(original)
    for name, w in dense.items():
        if name in masks:
            np.testing.assert_array_equal(pruned[name], np.where(masks[name], w, 0))
        else:
            np.testing.assert_array_equal(pruned[name], w)

    # Scores are the dense network's: the same as a one-shot run through the API.
    api = onnxflow.prune(model, sparsity=0.5, iterations=1)
    for name in names:
        np.testing.assert_array_equal(scores[name], api.log_scores[name])

    # The report agrees with the masks and the model.
    layers = report["layers"]
    assert [layer["name"] for layer in layers] == names
    for layer in layers:
        mask = masks[layer["name"]]
        consumers = [nd for nd in original.graph.node if layer["name"] in nd.input]
        assert layer["nodes"] == [nd.name for nd in consumers]
        assert layer["op"] == consumers[0].op_type
        assert tuple(layer["shape"]) == mask.shape
        assert layer["params"] == mask.size
        assert layer["kept"] == int(mask.sum())
        assert layer["density"] == pytest.approx(mask.sum() / mask.size)
        assert abs(layer["kept"] - 0.2 * mask.size) <= 1  # local scope
    totals = report["totals"]
    assert totals["params"] == n == sum(layer["params"] for layer in layers)
    assert totals["kept"] == round(0.2 * n) == sum(layer["kept"] for layer in layers)
    assert totals["density"] == pytest.approx(totals["kept"] / n)
    assert isinstance(report["seconds"], float) and report["seconds"] >= 0
    assert report["options"]["scope"] == "local" and report["options"]["schedule"] == "linear"


def test_quiet_prints_nothing(capsys: pytest.CaptureFixture[str], model: Path) -> None:
    code, out, err = cli(
        capsys, "prune", model, "--sparsity", 0.5, "--iterations", ITERS, "--quiet"
    )
    assert (code, out, err) == (0, "", "")


def test_progress_bar_on_a_terminal(
    capsys: pytest.CaptureFixture[str], model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats the captured stream as a terminal
    code, out, err = cli(capsys, "prune", model, "--sparsity", 0.5, "--iterations", ITERS)
    assert code == 0
    assert "pruning" in err and f"{ITERS}/{ITERS}" in err  # the bar, on stderr
    assert "total" in out and f"{ITERS}/{ITERS}" not in out  # the table, on stdout


def test_input_shape_for_a_dynamic_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    m = netgen.cifar_resnet(8, batch="N")
    dim = m.graph.input[0].type.tensor_type.shape.dim[2]
    dim.Clear()
    dim.dim_param = "height"
    path = write_model(tmp_path / "dyn.onnx", m)
    code, _, err = cli(capsys, "prune", path, "--sparsity", 0.9, "--iterations", ITERS, "-q")
    assert code == 2 and "'input'" in err and "height" in err
    assert not (tmp_path / "dyn.pruned.onnx").exists()
    code, _, err = cli(
        capsys,
        "prune",
        path,
        "--sparsity",
        0.9,
        "--iterations",
        ITERS,
        "-q",
        "--input-shape",
        "input=1x3x32x32",
    )
    assert (code, err) == (0, "")
    assert (tmp_path / "dyn.pruned.onnx").is_file()


def test_existing_output_is_replaced(
    capsys: pytest.CaptureFixture[str], work: Path, model: Path
) -> None:
    out = work / "tiny.pruned.onnx"
    out.write_bytes(b"previous contents")
    (work / "m.npz").write_bytes(b"old masks")
    code, _, _ = cli(
        capsys,
        "prune",
        model,
        "--sparsity",
        0.5,
        "--iterations",
        ITERS,
        "--masks",
        work / "m.npz",
        "-q",
    )
    assert code == 0
    onnx.checker.check_model(onnx.load(out))
    np.load(work / "m.npz").close()
    assert sorted(snapshot(work)) == ["m.npz", "tiny.onnx", "tiny.pruned.onnx"]


def _enospc(*args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[-1]) if args else None)


def _failing_model_writer(model: onnx.ModelProto) -> Callable[[BinaryIO], None]:
    def write(f: BinaryIO) -> None:
        f.write(model.SerializeToString()[:100])  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


@pytest.mark.parametrize("where", ["rename", "write"])
def test_write_failure_keeps_previous_files(
    capsys: pytest.CaptureFixture[str],
    work: Path,
    model: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    (work / "tiny.pruned.onnx").write_bytes(b"previous model")
    (work / "m.npz").write_bytes(b"previous masks")
    before = snapshot(work)
    if where == "rename":
        monkeypatch.setattr(save_module.os, "replace", _enospc)
    else:
        monkeypatch.setattr(onnxflow.api, "model_writer", _failing_model_writer)
    code, out, err = cli(
        capsys,
        "prune",
        model,
        "--sparsity",
        0.5,
        "--iterations",
        ITERS,
        "--masks",
        work / "m.npz",
        "-q",
    )
    monkeypatch.undo()
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and "No space left on device" in err
    assert snapshot(work) == before  # previous files intact, no temp files


def test_failure_renaming_the_second_file_changes_none(
    capsys: pytest.CaptureFixture[str], work: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`save()` promises all files change together or none does (api.save docstring)."""
    (work / "tiny.pruned.onnx").write_bytes(b"previous model")
    (work / "m.npz").write_bytes(b"previous masks")
    before = snapshot(work)
    real_replace, calls = os.replace, []

    def second_fails(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2:
            _enospc(dst)
        real_replace(src, dst)

    monkeypatch.setattr(save_module.os, "replace", second_fails)
    code, _, err = cli(
        capsys,
        "prune",
        model,
        "--sparsity",
        0.5,
        "--iterations",
        ITERS,
        "--masks",
        work / "m.npz",
        "-q",
    )
    monkeypatch.undo()
    assert code == 2 and len(err.splitlines()) == 1
    assert temp_files(work) == []
    assert snapshot(work) == before, "the model was replaced but the masks were not"


# -- failures --------------------------------------------------------------------------------

# The table of bad inputs (CLI and Python API) is tests/test_errors.py; here, what is
# particular to the command line: stderr holds nothing but the line, and the script entry point.


@pytest.fixture
def bad_inputs(work: Path) -> Path:
    (work / "adir").mkdir()
    (work / "empty.onnx").touch()
    (work / "random.onnx").write_bytes(b"\x8f\xff\x01garbage" + bytes(range(256)) * 3)
    tensor = numpy_helper.from_array(np.ones((2, 2), np.float32), "t")
    (work / "tensor.onnx").write_bytes(tensor.SerializeToString())
    relu = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    write_model(work / "relu.onnx", relu)
    return work


def _argv(template: list[str], work: Path) -> list[str]:
    return [a.format(m=work / "tiny.onnx", d=work) for a in template]


@pytest.mark.parametrize(
    "argv",
    [
        ["{m}", "--sparsity", "1.5"],  # options
        ["{m}", "--sparsity", "0.5", "-o", "{d}/nope/x.onnx"],  # output paths
        ["{d}/missing.onnx", "--sparsity", "0.5"],  # loading
        ["{d}/random.onnx", "--sparsity", "0.5"],
        ["{m}", "--sparsity", "0.5", "--input-shape", "x=1x3x16x16"],  # analysis
        ["{m}", "--sparsity", "0.9999"],  # pruning
    ],
    ids=["options", "paths", "missing", "random", "input-shape", "keeps-nothing"],
)
def test_error_is_exactly_one_line(
    capsys: pytest.CaptureFixture[str], bad_inputs: Path, argv: list[str]
) -> None:
    """Without --quiet too: stderr holds the error line and nothing else, not even a blank."""
    code, _, err = cli(capsys, "prune", "--iterations", ITERS, *_argv(argv, bad_inputs))
    assert code == 2
    assert len(err.splitlines()) == 1, f"stderr is {err!r}"


def test_current_directory_as_model(
    capsys: pytest.CaptureFixture[str], bad_inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`onnxflow prune . --sparsity 0.5` names the problem (a directory), not an internal error."""
    monkeypatch.chdir(bad_inputs / "adir")
    before = snapshot(bad_inputs)
    code, _, err = cli(capsys, "prune", ".", "--sparsity", 0.5, "-q")
    assert code == 2 and len(err.splitlines()) == 1
    assert "directory" in err and "internal error" not in err, err
    assert snapshot(bad_inputs) == before


@pytest.mark.skipif(runtime_module._cuda_usable(), reason="a CUDA device is available")
def test_provider_cuda_without_a_gpu(capsys: pytest.CaptureFixture[str], work: Path) -> None:
    before = snapshot(work)
    code, _, err = cli(
        capsys, "prune", work / "tiny.onnx", "--sparsity", 0.5, "--provider", "cuda", "-q"
    )
    assert code == 2 and len(err.splitlines()) == 1 and "cuda" in err.lower()
    assert snapshot(work) == before


# -- help ------------------------------------------------------------------------------------


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Help lists every option the command has, with its choices and default, taken from the
    click options themselves (which options.py's choice sets and defaults define)."""
    code, out, _ = cli(capsys, "--help")
    assert code == 0 and "prune" in out and "inspect" in out
    for command in (cli_module.prune, cli_module.inspect):
        code, out, _ = cli(capsys, command.name, "--help")
        assert code == 0
        flat = " ".join(out.split())  # help wraps long lines
        options = [p for p in command.params if isinstance(p, click.Option)]
        assert len(options) >= (20 if command.name == "prune" else 3)
        for option in options:
            assert max(option.opts, key=len) in flat, option.name
            if isinstance(option.type, click.Choice):
                assert "[" + "|".join(map(str, option.type.choices)) in flat, option.name
            if option.show_default and not option.is_flag:
                assert f"[default: {option.default}]" in flat, option.name
    fields = set(PruneOptions.__dataclass_fields__)
    params = {p.name for p in cli_module.prune.params}
    assert fields <= params  # every field can be set from the command line


# -- the installed console script ------------------------------------------------------------


def _script() -> str:
    found = shutil.which("onnxflow", path=str(Path(sys.executable).parent)) or shutil.which(
        "onnxflow"
    )
    if found is None:
        pytest.skip("the onnxflow console script is not installed")
    return found


def _run_script(*argv: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    return subprocess.run(
        [_script(), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_script_success(work: Path, model: Path) -> None:
    proc = _run_script(
        "prune", model, "--sparsity", 0.9, "--iterations", ITERS, "--report", work / "r.json"
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "total" in proc.stdout
    assert json.loads((work / "r.json").read_text())["totals"]["params"] == 1488
    assert (work / "tiny.pruned.onnx").is_file()


def test_script_failure(bad_inputs: Path) -> None:
    before = snapshot(bad_inputs)
    proc = _run_script("prune", bad_inputs / "random.onnx", "--sparsity", 0.5, "--quiet")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1
    assert snapshot(bad_inputs) == before
