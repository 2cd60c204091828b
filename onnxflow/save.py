"""Writing results: atomic, all-or-nothing, never over the input.

Every file is first written to a temporary file in its destination folder and flushed to
disk; only when all of them are complete are they renamed into place. A failure (full disk,
Ctrl-C) leaves either the previous files or nothing, never a partial file.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx

from onnxflow.errors import OnnxflowError, Opt

Writer = Callable[[BinaryIO], None]


def check_output_paths(source: str | os.PathLike[str] | None, outputs: Mapping[str, Path]) -> None:
    """Fail before any work if an output could not be written or would clobber the input."""
    seen: dict[Path, str] = {}
    src = Path(source).resolve() if source is not None else None
    for label, path in outputs.items():
        opt = Opt(label)  # the output's role: `masks`, which the CLI calls `--masks`
        resolved = path.resolve()
        if src is not None and resolved == src:
            raise OnnxflowError(
                "{opt} {path} is the input model; it is never overwritten", opt=opt, path=path
            )
        if resolved in seen:
            raise OnnxflowError(
                "{opt} and {other} are the same file: {path}",
                opt=opt,
                other=Opt(seen[resolved]),
                path=path,
            )
        seen[resolved] = label
        if path.is_dir():
            raise OnnxflowError("{opt} {path} is a directory", opt=opt, path=path)
        parent = resolved.parent
        if not parent.is_dir():
            raise OnnxflowError(
                "{opt} {path}: folder {parent} does not exist", opt=opt, path=path, parent=parent
            )
        try:  # os.access says yes to root even where the filesystem says no
            fd, probe = tempfile.mkstemp(prefix=".onnxflow-probe.", dir=parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise OnnxflowError(
                "{opt} {path}: folder {parent} is not writable ({why})",
                opt=opt,
                path=path,
                parent=parent,
                why=e.strerror or e,
            ) from None
        if path.exists() and not os.access(path, os.W_OK):
            raise OnnxflowError("{opt} {path} is not writable", opt=opt, path=path)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(files: Mapping[Path, Writer]) -> None:
    """Write every file through a temporary sibling, then move them all into place.

    Existing files are kept as hard-link backups until every new file is in place, so a
    failure part-way through the renames restores the previous set.
    """
    temps: list[tuple[str, Path]] = []
    placed: list[tuple[Path, str | None]] = []
    mode = 0o666 & ~_umask()
    try:
        for path, write in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            os.chmod(tmp, mode)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in temps:
            backup = _backup(path, tmp)
            try:
                os.replace(tmp, path)
            except OSError:
                if backup is not None:
                    os.unlink(backup)  # the old file is still in place
                raise
            placed.append((path, backup))
        temps.clear()
    except BaseException as e:  # an error or Ctrl-C part-way: put the previous files back
        for path, backup in reversed(placed):
            with contextlib.suppress(OSError):
                if backup is None:
                    os.unlink(path)
                else:
                    os.replace(backup, path)
        placed.clear()
        if isinstance(e, OSError):
            raise OnnxflowError(
                f"cannot write {e.filename or 'output'}: {e.strerror or e}"
            ) from None
        raise
    finally:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for _, backup in placed:
            if backup is not None:
                with contextlib.suppress(OSError):
                    os.unlink(backup)


def _backup(path: Path, tmp: str) -> str | None:
    """A hard link (or copy) of the current file, to restore it if a later step fails."""
    if not path.exists():
        return None
    backup = f"{tmp}.bak"
    try:
        os.link(path, backup)
    except OSError:
        shutil.copy2(path, backup)
    return backup


def model_writer(model: onnx.ModelProto) -> Writer:
    def write(f: BinaryIO) -> None:
        f.write(model.SerializeToString())

    return write


def npz_writer(arrays: Mapping[str, np.ndarray], *, compress: bool = True) -> Writer:
    """An .npz writer. `compress=False` for float scores: deflate gains little on them (13%
    on ResNet-50's 204 MB of float64 scores, whose low digits are noise) and ran at a few
    MB/s, dominating large runs; stored uncompressed they are written at disk speed."""

    def write(f: BinaryIO) -> None:
        if compress:
            buf = io.BytesIO()
            np.savez_compressed(buf, **dict(arrays))  # type: ignore[arg-type]
            f.write(buf.getvalue())
        else:  # straight to the file: no second copy in memory
            np.savez(f, **dict(arrays))  # type: ignore[arg-type]

    return write


def text_writer(text: str) -> Writer:
    def write(f: BinaryIO) -> None:
        f.write(text.encode())

    return write
