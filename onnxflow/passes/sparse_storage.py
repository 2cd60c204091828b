"""Sparse storage (`--sparse-storage`): pruned weights as ONNX `sparse_initializer`s.

A weight initializer moves to `graph.sparse_initializer` (COO: its nonzero values and their
int64 positions in the flattened tensor) when that is smaller than storing it densely. The
indices are written as protobuf varints (`int64_data`), so a position below 2^21 takes 3 bytes
rather than 8; values keep their dtype. onnxruntime expands sparse initializers back to dense
tensors when it loads the model, so this shrinks the file, not the memory or the run time.

Weights stored as Constant nodes, and initializers that are also graph inputs (overridable
defaults), stay dense. A model that already has sparse initializers (an earlier
`--sparse-storage` output) is made dense when it is loaded, so it can be inspected and pruned
again.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxflow.errors import OnnxflowError

# sparse_initializer exists from IR version 6 on.
SPARSE_MIN_IR_VERSION = 6
MAX_DENSE_BYTES = 4 << 30


def _varint_bytes(indices: np.ndarray) -> int:
    """Bytes protobuf needs for these nonnegative int64 values as packed varints."""
    if indices.size == 0:
        return 0
    bits = np.maximum(1, np.floor(np.log2(np.maximum(indices, 1))).astype(np.int64) + 1)
    return int(np.sum((bits + 6) // 7))


def sparse_tensor(name: str, values: np.ndarray) -> onnx.SparseTensorProto | None:
    """COO form of `values`, or None if it would not be smaller than the dense tensor."""
    flat = values.reshape(-1)
    idx = np.flatnonzero(flat).astype(np.int64)
    if _varint_bytes(idx) + idx.size * flat.itemsize >= flat.nbytes:
        return None
    sparse = onnx.SparseTensorProto()
    sparse.dims.extend(values.shape)
    sparse.values.CopyFrom(numpy_helper.from_array(flat[idx], name))
    sparse.indices.name = f"{name}.indices"
    sparse.indices.data_type = onnx.TensorProto.INT64
    sparse.indices.dims.append(idx.size)
    sparse.indices.int64_data.extend(idx.tolist())
    return sparse


def to_sparse_storage(model: onnx.ModelProto, names: set[str]) -> list[str]:
    """Move the initializers in `names` to sparse_initializer where that is smaller, in place.

    Returns the names of the tensors that were moved.
    """
    graph = model.graph
    inputs = {i.name for i in graph.input}
    moved: list[str] = []
    keep: list[onnx.TensorProto] = []
    for t in graph.initializer:
        sparse = None
        if t.name in names and t.name not in inputs:
            sparse = sparse_tensor(t.name, numpy_helper.to_array(t))
        if sparse is None:
            keep.append(t)
        else:
            graph.sparse_initializer.append(sparse)
            moved.append(t.name)
    if moved:
        del graph.initializer[:]
        graph.initializer.extend(keep)
        model.ir_version = max(model.ir_version, SPARSE_MIN_IR_VERSION)
    return moved


def dense_tensor(sparse: onnx.SparseTensorProto) -> onnx.TensorProto:
    """The dense TensorProto of a COO sparse tensor (linear or [nnz, rank] indices)."""
    values = numpy_helper.to_array(sparse.values).reshape(-1)
    dims = tuple(int(d) for d in sparse.dims)
    size = int(np.prod(dims, dtype=np.int64))
    if size * values.itemsize > MAX_DENSE_BYTES:
        raise OnnxflowError(
            f"sparse initializer {sparse.values.name!r} of shape {list(dims)} would need "
            f"{size * values.itemsize / 2**30:.1f} GiB as a dense tensor; the limit is 4 GiB"
        )
    idx = numpy_helper.to_array(sparse.indices).astype(np.int64)
    if idx.ndim == 2:
        idx = np.ravel_multi_index(tuple(idx.T), dims) if idx.size else idx.reshape(-1)
    dense = np.zeros(size, values.dtype)
    dense[idx] = values
    return numpy_helper.from_array(dense.reshape(dims), sparse.values.name)


def densify(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every sparse initializer made a dense one (a copy if there are any)."""
    if not model.graph.sparse_initializer:
        return model
    dense = onnx.ModelProto()
    dense.CopyFrom(model)
    dense.graph.initializer.extend(dense_tensor(s) for s in dense.graph.sparse_initializer)
    del dense.graph.sparse_initializer[:]
    return dense
