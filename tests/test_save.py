"""onnxflow/save.py on its own: output paths checked before any work, files written all or
nothing. The command-line side (exit 2, failures injected into a real prune) is in
test_cli.py and test_faults.py; these are the module's unit tests on plain files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxflow.errors import OnnxflowError
from onnxflow.save import (
    check_output_paths,
    model_writer,
    npz_writer,
    text_writer,
    write_atomically,
)


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every entry of the folder with its bytes (None for a folder)."""
    return {p.name: None if p.is_dir() else p.read_bytes() for p in sorted(folder.iterdir())}


def test_check_output_paths_accepts_new_files_in_existing_folders(tmp_path: Path) -> None:
    check_output_paths(tmp_path / "m.onnx", {"output": tmp_path / "o.onnx"})
    assert listing(tmp_path) == {}  # the writability probe leaves nothing behind


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ({"output": "m.onnx"}, r"^output .*m\.onnx is the input model; it is never overwritten$"),
        ({"masks": "./m.onnx"}, r"^masks .*m\.onnx is the input model"),
        ({"masks": "a", "report": "a"}, r"^report and masks are the same file: .*a$"),
        ({"output": "adir"}, r"^output .*adir is a directory$"),
        ({"output": "nope/x.onnx"}, r"^output .*x\.onnx: folder .*nope does not exist$"),
    ],
    ids=["input", "input-spelled-differently", "same-file", "directory", "missing-folder"],
)
def test_check_output_paths_refuses_in_the_library_s_words(
    tmp_path: Path, outputs: dict[str, str], message: str
) -> None:
    """Messages name the output's role (the field), never a flag: the CLI maps roles to
    flags (test_errors.py runs the same cases through the CLI)."""
    (tmp_path / "adir").mkdir()
    source = tmp_path / "m.onnx"
    source.write_bytes(b"model")
    with pytest.raises(OnnxflowError, match=message) as raised:
        check_output_paths(source, {k: tmp_path / v for k, v in outputs.items()})
    assert "--" not in str(raised.value)
    assert listing(tmp_path) == {"adir": None, "m.onnx": b"model"}


def test_write_atomically_writes_every_file(tmp_path: Path) -> None:
    model = helper.make_model(helper.make_graph([], "g", [], []))
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    write_atomically(
        {
            tmp_path / "m.onnx": model_writer(model),
            tmp_path / "a.npz": npz_writer(arrays),
            tmp_path / "b.npz": npz_writer(arrays, compress=False),
            tmp_path / "r.txt": text_writer("report\n"),
        }
    )
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz", "m.onnx", "r.txt"]  # no temps
    assert onnx.load(tmp_path / "m.onnx") == model
    for name in ("a.npz", "b.npz"):
        with np.load(tmp_path / name) as z:
            np.testing.assert_array_equal(z["w"], arrays["w"])
    assert (tmp_path / "r.txt").read_text() == "report\n"


def test_a_failing_writer_leaves_the_previous_files_and_no_temporaries(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")

    def fails(f: BinaryIO) -> None:
        f.write(b"half")
        raise OSError(28, "No space left on device", "b.txt")

    with pytest.raises(OnnxflowError, match=r"^cannot write b\.txt: No space left on device$"):
        write_atomically({tmp_path / "a.txt": text_writer("new a"), tmp_path / "b.txt": fails})
    assert listing(tmp_path) == {"a.txt": b"old a", "b.txt": b"old b"}


def test_a_failing_rename_puts_back_the_files_already_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second rename fails after the first file was replaced: the first comes back."""
    (tmp_path / "a.txt").write_text("old a")
    real_replace = os.replace
    calls: list[str] = []

    def second_fails(src: str, dst: str | Path) -> None:
        calls.append(str(dst))
        if len(calls) == 2:
            raise OSError(5, "Input/output error", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OnnxflowError, match=r"Input/output error"):
        write_atomically(
            {tmp_path / "a.txt": text_writer("new a"), tmp_path / "b.txt": text_writer("new b")}
        )
    monkeypatch.undo()
    assert listing(tmp_path) == {"a.txt": b"old a"}


def test_an_interrupt_while_writing_leaves_nothing_new(tmp_path: Path) -> None:
    def interrupted(f: BinaryIO) -> None:
        f.write(b"part")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically({tmp_path / "a.txt": text_writer("a"), tmp_path / "b.txt": interrupted})
    assert listing(tmp_path) == {}
