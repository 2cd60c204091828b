"""Models with external data (weights in files beside the .onnx, e.g. over protobuf's 2 GB).

Memory is what limits large models, so large external tensors are never all in memory at
once beside their copies: the loader leaves initializers of `LAZY_BYTES` or more in their
files, graph-surgeon reads them on demand (`ExternalValues`), the flow engine takes |W| from
them without caching the signed values, and `materialize` brings them in one at a time, masked.
The pruned model is written back with its large tensors in one data file beside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import Message
from onnx import external_data_helper, helper, numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxflow.errors import OnnxflowError, one_line

LAZY_BYTES = 16 << 20
"""External initializers this large stay in their file until they are needed."""

EXTERNAL_MIN_BYTES = 1024
"""When the output uses external data, tensors this large go to the data file (onnx's own
default threshold)."""

PROTOBUF_LIMIT = 2**31 - 1


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes, subgraphs included (as onnx.load walks them)."""
    return iter(external_data_helper._get_all_tensors(model))


def is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def load_small(model: onnx.ModelProto, base: Path, lazy_bytes: int | None = None) -> bool:
    """Load the external data of every tensor except initializers of `lazy_bytes` or more
    (default `LAZY_BYTES`), in place.

    Returns whether some initializer was left in its file (read later with `read_external`).
    """
    lazy_bytes = LAZY_BYTES if lazy_bytes is None else lazy_bytes
    lazy = False
    initializers = [t for t in model.graph.initializer if is_external(t)]
    attributes = [t for t in external_data_helper._get_attribute_tensors(model) if is_external(t)]
    for i, t in enumerate([*initializers, *attributes]):
        if i < len(initializers) and external_nbytes(t) >= lazy_bytes:
            lazy = True
            continue
        try:
            external_data_helper.load_external_data_for_tensor(t, str(base))
        except OSError as e:
            raise OnnxflowError(f"cannot read external data of {t.name!r}: {one_line(e)}") from None
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]
    return lazy


def external_info(t: onnx.TensorProto) -> dict[str, str]:
    """A tensor's external-data entries (`location`, `offset`, `length`, ...) as a dict."""
    return {e.key: e.value for e in t.external_data}


# Sub-byte types pack several values per byte.
_BITS = {
    getattr(onnx.TensorProto, n): bits
    for n, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(onnx.TensorProto, n)
}


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's raw data as its shape and type declare them (0 for strings)."""
    count = 1
    for d in t.dims:
        count *= int(d)
    if t.data_type in _BITS:
        return (count * _BITS[t.data_type] + 7) // 8
    if t.data_type == onnx.TensorProto.STRING:
        return 0
    return count * int(helper.tensor_dtype_to_np_dtype(t.data_type).itemsize)


def external_nbytes(t: onnx.TensorProto) -> int:
    """Bytes an external tensor occupies in its file. `length` is optional in the external
    data entries (the TorchScript exporter's > 2 GB models omit it): without it, the size
    its shape and type declare, which `load_source` has checked the file holds."""
    length = external_info(t).get("length")
    return int(length) if length else tensor_nbytes(t)


def read_external(t: onnx.TensorProto, base: Path) -> np.ndarray:
    """The values of an external tensor, read from its file (checked by `load_source`)."""
    info = external_info(t)
    offset, length = int(info.get("offset", 0)), external_nbytes(t)
    with open(base / info["location"], "rb") as f:
        f.seek(offset)
        raw = f.read(length)
    tmp = onnx.TensorProto(name=t.name, dims=t.dims, data_type=t.data_type, raw_data=raw)
    del raw
    return numpy_helper.to_array(tmp)


class ExternalValues(LazyValues):
    """graph-surgeon lazy values of a tensor that is still in its external file."""

    def __init__(self, tensor: onnx.TensorProto, base: Path) -> None:
        super().__init__(tensor)
        self.base = base

    def load(self) -> np.ndarray:
        return read_external(self.tensor, self.base)


def attach(graph: gs.Graph, base: Path | None) -> None:
    """Make the graph's external constants readable from `base` (the model's folder)."""
    for t in graph.tensors().values():
        lazy = getattr(t, "_values", None)
        if isinstance(lazy, LazyValues) and is_external(lazy.tensor):
            if base is None:
                raise OnnxflowError(
                    f"tensor {t.name!r} has external data, but the model was given without "
                    "its folder: pass the model's path, or load it with its external data"
                )
            t._values = ExternalValues(lazy.tensor, base)


def constant_array(c: gs.Constant) -> np.ndarray:
    """A constant's values without keeping a copy in the graph (large weights are read once,
    by the flow engine, which keeps only |W|)."""
    lazy = getattr(c, "_values", None)
    if isinstance(lazy, LazyValues):
        return np.asarray(lazy.load())
    return np.asarray(c.values)


def external_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's tensors that are still in external files."""
    return sum(external_nbytes(t) for t in _all_tensors(model) if is_external(t))


# --- writing -----------------------------------------------------------------------------


def _big_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for t in model.graph.initializer:
        if t.HasField("raw_data") and t.ByteSize() >= EXTERNAL_MIN_BYTES:
            yield t


def _copy_without(msg: Message, skip: str) -> Message:
    """A copy of `msg` without its field `skip` (not copying that field's data at all)."""
    out = type(msg)()
    for field, value in msg.ListFields():
        if field.name == skip:
            continue
        if isinstance(value, Message):
            getattr(out, field.name).CopyFrom(value)
        elif hasattr(value, "extend"):  # a repeated field
            getattr(out, field.name).extend(value)
        else:
            setattr(out, field.name, value)
    return out


class ExternalDataWriter:
    """Writes a model as `<output>` + `<output>.data`: two save.py writers sharing a layout.

    The data writer must run first; it streams each large initializer to the data file and
    records where it went, and the model writer then serializes a skeleton that points there.
    Neither copies the whole model.
    """

    def __init__(self, model: onnx.ModelProto, data_name: str) -> None:
        self.model = model
        self.data_name = data_name
        self.layout: dict[str, tuple[int, int]] = {}

    def write_data(self, f: BinaryIO) -> None:
        offset = 0
        for t in _big_tensors(self.model):
            raw = t.raw_data
            pad = -offset % 4096  # page-aligned, so onnxruntime can map the data
            f.write(b"\0" * pad)
            offset += pad
            f.write(raw)
            self.layout[t.name] = (offset, len(raw))
            offset += len(raw)

    def write_model(self, f: BinaryIO) -> None:
        skeleton = _copy_without(self.model, "graph")
        assert isinstance(skeleton, onnx.ModelProto)
        skeleton.graph.CopyFrom(_copy_without(self.model.graph, "initializer"))
        for t in self.model.graph.initializer:
            if t.name not in self.layout:
                skeleton.graph.initializer.add().CopyFrom(t)
                continue
            offset, length = self.layout[t.name]
            out = skeleton.graph.initializer.add()
            out.CopyFrom(_copy_without(t, "raw_data"))
            del out.external_data[:]
            info = {"location": self.data_name, "offset": offset, "length": length}
            for key, value in info.items():
                entry = out.external_data.add()
                entry.key, entry.value = key, str(value)
            out.data_location = onnx.TensorProto.EXTERNAL
        if skeleton.ByteSize() > PROTOBUF_LIMIT:
            raise OnnxflowError(
                "the pruned model's graph is over 2 GB even with its initializers in external "
                "data (large Constant nodes?); it cannot be written as ONNX"
            )
        f.write(skeleton.SerializeToString())


def _field_bytes(size: int) -> int:
    """A length-delimited protobuf field of `size` bytes: 1 tag byte, varint length, data."""
    return 1 + max(1, (size.bit_length() + 6) // 7) + size


def model_bytes(model: onnx.ModelProto) -> int:
    """Serialized size of a model held in memory, counted one initializer at a time:
    protobuf's `ByteSize()` serializes the whole model to measure it (a full copy), and fails
    past 2 GB."""
    graph = int(_copy_without(model.graph, "initializer").ByteSize())
    graph += sum(_field_bytes(int(t.ByteSize())) for t in model.graph.initializer)
    return int(_copy_without(model, "graph").ByteSize()) + _field_bytes(graph)


def data_path(output: str | os.PathLike[str]) -> Path:
    """The external data file written beside `output`."""
    p = Path(output)
    return p.with_name(p.name + ".data")
