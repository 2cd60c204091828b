"""Loading: read the model file (or take a ModelProto) and check it before trusting it.

Files come from anywhere, so before any tensor is read or allocated: external data must lie
inside the model's folder (no absolute paths, no `..`, no symlinks leading out) and be as
long as declared, and every tensor's declared shape must match the data it holds.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import onnx
from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError, Message
from onnx import helper

from onnxflow.errors import OnnxflowError, one_line
from onnxflow.external import (
    external_bytes,
    external_info,
    is_external,
    load_small,
    model_bytes,
)
from onnxflow.passes.sparse_storage import densify
from onnxflow.stages import Source

_PROTOBUF_LIMIT = 2**31 - 1

# What onnx.load raises for a file in one of its text formats that does not parse.
_TEXT_PARSE_ERRORS: tuple[type[Exception], ...] = (
    json_format.ParseError,
    text_format.ParseError,
    onnx.parser.ParseError,
)


def load_model(path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, bool]:
    """Load an ONNX file, turning every way it can be wrong into a one-line `OnnxflowError`.

    Returns the model and whether it stores tensors in external data files (large ones are
    left there, to be read when needed)."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise OnnxflowError(f"no such file: {p}")
    if os.path.isdir(p):
        raise OnnxflowError(f"{p} is a directory, not an ONNX model file")
    if not os.path.isfile(p):
        raise OnnxflowError(f"{p} is not a regular file")
    if os.path.getsize(p) == 0:
        raise OnnxflowError(f"{p} is empty, not an ONNX model")
    try:
        with warnings.catch_warnings():  # onnx warns that its text format is experimental
            warnings.simplefilter("ignore")
            model = onnx.load(p, load_external_data=False)
    except OSError as e:
        raise OnnxflowError(f"cannot read {p}: {one_line(e)}") from None
    except (DecodeError, RuntimeError, ValueError, *_TEXT_PARSE_ERRORS) as e:
        # onnx picks the format by extension: .json, .textproto, .onnxtxt are parsed as text
        raise OnnxflowError(f"{p} is not a readable ONNX model ({one_line(e)})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise OnnxflowError(f"{p} is not an ONNX model: it has no graph nodes")
    try:
        _decode_text(model)
    except UnicodeError:
        raise OnnxflowError(f"{p} is not a valid ONNX model: some text is not UTF-8") from None
    base = Path(p).resolve().parent
    for tensor in _tensors(model):
        check_tensor(tensor, base, p)
    external = any(is_external(t) for t in _tensors(model))
    lazy = load_small(model, base)  # large initializers are read when needed
    check_model(model, p, p, on_disk=lazy)
    return model, external


def _decode_text(message: Message) -> None:
    """Check that every text field is valid UTF-8. ONNX's proto2 strings are not validated
    when parsed: invalid bytes come back as lone surrogates and fail only when a later pass
    writes them out, so this raises UnicodeError here instead."""
    if isinstance(message, onnx.TensorProto):  # skip the (possibly huge) data fields
        texts = [message.name, message.doc_string]
        texts += [e.key for e in message.external_data] + [e.value for e in message.external_data]
        if not all(isinstance(text, str) for text in texts):
            raise UnicodeError(message.name)  # protobuf hands back invalid UTF-8 as bytes
        return
    if isinstance(message, onnx.AttributeProto):  # string attributes are bytes, read as text
        for raw in [message.s, *message.strings]:
            raw.decode("utf-8")
    for field, value in message.ListFields():
        repeated = hasattr(value, "__len__") and not isinstance(value, str | bytes | Message)
        for item in value if repeated else [value]:
            if isinstance(item, Message):
                _decode_text(item)
            elif field.type == field.TYPE_STRING and not isinstance(item, str):
                raise UnicodeError(field.name)  # protobuf hands back invalid UTF-8 as bytes


def _tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Initializers and Constant-node values of the main graph."""
    found = list(model.graph.initializer)
    found += [s.values for s in model.graph.sparse_initializer]
    for node in model.graph.node:
        found += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    return found


def check_tensor(t: onnx.TensorProto, base: Path, label: str) -> None:
    """Declared shape against stored data; external data location and length."""
    if any(d < 0 for d in t.dims):
        raise OnnxflowError(f"{label}: tensor {t.name!r} has a negative dimension {list(t.dims)}")
    count = math.prod(t.dims)
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        raise OnnxflowError(
            f"{label}: tensor {t.name!r} has unknown data type {t.data_type}"
        ) from None
    if t.data_type == onnx.TensorProto.STRING:
        return
    expected = count * itemsize
    if is_external(t):
        _check_external(t, base, label, expected)
    elif t.HasField("raw_data"):
        if len(t.raw_data) != expected and itemsize >= 1 and t.data_type not in _PACKED:
            raise OnnxflowError(
                f"{label}: tensor {t.name!r} declares shape {list(t.dims)} ({expected} bytes) "
                f"but holds {len(t.raw_data)} bytes"
            )
    else:
        field = helper.tensor_dtype_to_field(t.data_type)
        held = len(getattr(t, field))
        per = 2 if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
        if held != count * per and t.data_type not in _PACKED:
            raise OnnxflowError(
                f"{label}: tensor {t.name!r} declares shape {list(t.dims)} ({count} values) "
                f"but holds {held // per}"
            )


# Sub-byte types pack several values per byte; their sizes are not checked here.
_PACKED = {
    getattr(onnx.TensorProto, n)
    for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
    if hasattr(onnx.TensorProto, n)
}


def _check_external(t: onnx.TensorProto, base: Path, label: str, expected: int) -> None:
    info = external_info(t)
    location = info.get("location", "")
    if not location:
        raise OnnxflowError(f"{label}: tensor {t.name!r} has external data without a location")
    if os.path.isabs(location) or Path(location).drive:
        raise OnnxflowError(
            f"{label}: external data of {t.name!r} has an absolute location {location!r}; "
            "only files inside the model's folder are read"
        )
    target = (base / location).resolve()
    if not target.is_relative_to(base):
        raise OnnxflowError(
            f"{label}: external data of {t.name!r} points outside the model's folder "
            f"({location!r}); refused"
        )
    if not target.is_file():
        raise OnnxflowError(f"{label}: external data file {location!r} of {t.name!r} is missing")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else expected
    except ValueError:
        raise OnnxflowError(
            f"{label}: tensor {t.name!r} has a malformed external offset/length"
        ) from None
    if offset < 0 or length != expected:
        raise OnnxflowError(
            f"{label}: external data of {t.name!r} declares {length} bytes at offset {offset}, "
            f"but its shape {list(t.dims)} needs {expected}"
        )
    if target.stat().st_size < offset + length:
        raise OnnxflowError(
            f"{label}: external data file {location!r} is shorter than declared for {t.name!r} "
            f"({target.stat().st_size} < {offset + length} bytes)"
        )


def check_model(
    model: onnx.ModelProto, label: str, path: str | None = None, *, on_disk: bool = False
) -> None:
    """Reject protobufs that are not models and models that fail onnx.checker."""
    if not isinstance(model, onnx.ModelProto):
        raise OnnxflowError(f"{label}: expected an onnx.ModelProto, got {type(model).__name__}")
    if not model.HasField("graph") or not model.graph.node:
        raise OnnxflowError(f"{label} is not an ONNX model: it has no graph nodes")
    try:
        if (on_disk or model_bytes(model) > _PROTOBUF_LIMIT) and path is not None:
            onnx.checker.check_model(path)  # the checker reads large models from disk
        else:
            onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise OnnxflowError(f"{label} fails onnx.checker: {one_line(e)}") from None


def load_source(model: str | os.PathLike[str] | onnx.ModelProto) -> Source:
    """The first stage: a model file loaded and checked (large tensors left in their external
    files), or a ModelProto checked as it is (it must hold all of its data; it is not
    modified). Sparse initializers are made dense so the model can be analysed."""
    if isinstance(model, onnx.ModelProto):
        if any(is_external(t) for t in _tensors(model)):
            raise OnnxflowError(
                "the model's tensors are in external data files that were not loaded: "
                "pass the model's path, or load it with its external data"
            )
        check_model(model, "model")
        loaded, label, base, external = model, "model", None, False
    else:
        label = os.fspath(model)
        loaded, external = load_model(label)
        base = Path(label).resolve().parent
    loaded = densify(loaded)
    size = model_bytes(loaded) + external_bytes(loaded)
    return Source(loaded, label, base, external, size)
