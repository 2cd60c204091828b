"""The compact model: the original with every removed channel gone.

Works on the original ModelProto (not the analysis graph, which has static shapes and folded
constants): each stored tensor that carries a channel loses its slices (`np.take` of the kept
indices), each node attribute or shape constant that carries a channel count is rewritten,
intermediate shapes are dropped and inferred again, and the result is checked with
`onnx.checker.check_model(full_check=True)`. Graph inputs and outputs are untouched (their
channels are frozen), so the compact model has the original's interface.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxflow.channels.groups import STORED, ChannelGroups, ComputedShapes, Edit
from onnxflow.errors import OnnxflowError, one_line
from onnxflow.passes.apply_masks import MAX_IR_VERSION
from onnxflow.tensors import read_stored, rewrite_stored, stored_tensor_names

logger = logging.getLogger(__name__)


def materialize(
    model: onnx.ModelProto,
    cg: ChannelGroups,
    removed: Iterable[int],
    base_dir: Path | None = None,
) -> tuple[onnx.ModelProto, dict[str, dict[int, list[int]]]]:
    """The compact model and the kept indices by stored tensor and axis."""
    gone = np.fromiter(removed, np.int64)
    compact = onnx.ModelProto()
    compact.CopyFrom(model)
    kept: dict[str, dict[int, list[int]]] = {}
    by_tensor: dict[str, list[tuple[int, np.ndarray]]] = {}
    for (name, axis), gids in cg.claims.items():
        keep = np.flatnonzero(~np.isin(gids, gone))
        kept.setdefault(name, {})[axis] = keep.tolist()
        if len(keep) < len(gids):
            by_tensor.setdefault(name, []).append((axis, keep))
    for name, cuts in by_tensor.items():
        # a copy reads the model as given: its source may have been cut already
        values = np.asarray(
            read_stored(
                model if name in cg.copies else compact, cg.copies.get(name, name), base_dir
            )
        )
        for axis, keep in cuts:
            values = np.take(values, keep, axis=axis)
        if name in cg.copies:  # its own initializer now, the copy's Identity gone
            _uncopy(compact, name, np.ascontiguousarray(values))
        else:
            rewrite_stored(compact, name, np.ascontiguousarray(values))
    for name, source in cg.copies.items():  # uncut copies of a cut tensor keep its values
        if name not in by_tensor and source in by_tensor:
            _uncopy(compact, name, np.asarray(read_stored(model, source, base_dir)))
    declared = {vi.name: vi for vi in compact.graph.input}  # IR < 4: initializers are inputs
    for name in by_tensor:
        if name in declared:
            dims = read_stored(compact, name).shape
            vi = declared[name]
            vi.type.tensor_type.shape.Clear()
            for d in dims:
                vi.type.tensor_type.shape.dim.add().dim_value = int(d)
    nodes = {n.output[0]: n for n in compact.graph.node if n.output}
    for edit in cg.edits:
        counts = [int(np.count_nonzero(~np.isin(p, gone))) for p in edit.parts]
        if counts == [len(p) for p in edit.parts]:
            continue
        node = nodes.get(edit.node)
        if node is None:
            raise OnnxflowError(
                f"cannot remove channels: node producing {edit.node!r} is not in the model "
                "as written (it was computed from constants)"
            )
        _EDITS[edit.kind](compact, node, edit, counts)
    for t in compact.graph.initializer:  # external tensors come back inline
        if t.data_location == onnx.TensorProto.EXTERNAL and base_dir is not None:
            t.CopyFrom(numpy_helper.from_array(read_stored(model, t.name, base_dir), t.name))
    del compact.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(compact, strict_mode=False)
        compact.graph.value_info.extend(inferred.graph.value_info)
    except Exception as e:  # noqa: BLE001 - inference is a courtesy; the checker decides
        logger.debug("shape inference of the compact model failed: %s", e)
    needed = helper.find_min_ir_version_for(list(compact.opset_import), True)
    if compact.ir_version > max(MAX_IR_VERSION, needed):
        compact.ir_version = max(MAX_IR_VERSION, needed)
    try:
        onnx.checker.check_model(compact, full_check=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several types
        raise OnnxflowError(f"the compact model fails onnx.checker: {one_line(e)}") from None
    return compact, kept


def _uncopy(model: onnx.ModelProto, name: str, values: np.ndarray) -> None:
    """Store `values` as initializer `name`, which the model computed as an Identity of
    another stored tensor (that tensor and its other readers keep their values)."""
    for i, node in enumerate(model.graph.node):
        if node.op_type == "Identity" and list(node.output) == [name]:
            del model.graph.node[i]
            break
    model.graph.initializer.append(numpy_helper.from_array(values, name))


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def _set_attr(node: onnx.NodeProto, name: str, value: object) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def _new_constant(model: onnx.ModelProto, base: str, values: np.ndarray) -> str:
    """Add an initializer under a fresh name (the old one may be shared by other nodes)."""
    taken = {t.name for t in model.graph.initializer} | {
        o for n in model.graph.node for o in n.output
    }
    name, i = f"{base}_channels", 0
    while name in taken:
        i += 1
        name = f"{base}_channels{i}"
    model.graph.initializer.append(numpy_helper.from_array(values, name))
    return name


def _group(model: onnx.ModelProto, node: onnx.NodeProto, edit: Edit, counts: list[int]) -> None:
    """Depthwise Conv: one group per kept channel."""
    _set_attr(node, "group", counts[0])


def _split(model: onnx.ModelProto, node: onnx.NodeProto, edit: Edit, counts: list[int]) -> None:
    if any(c == 0 for c in counts):
        raise OnnxflowError(f"cannot remove channels: a part of Split {node.name!r} would be empty")
    sizes = np.array(counts, dtype=np.int64)
    if _opset(model) >= 13:
        name = _new_constant(model, node.output[0] + "_split", sizes)
        if len(node.input) > 1:
            node.input[1] = name
        else:
            node.input.append(name)
        for i, a in enumerate(node.attribute):
            if a.name == "num_outputs":
                del node.attribute[i]
                break
    else:
        _set_attr(node, "split", counts)


def _reshape(model: onnx.ModelProto, node: onnx.NodeProto, edit: Edit, counts: list[int]) -> None:
    """The shape operand's channel dimension (Reshape's shape, Resize's sizes: input
    `edit.operand`), when the model stores it as a constant; a -1 or 0 there (or a shape
    computed at run time from the input) adapts by itself."""
    k = edit.operand
    try:
        shape = np.array(read_stored(model, node.input[k]), dtype=np.int64)
    except (KeyError, IndexError):
        _concat_part(model, node, k, edit.axis, counts[0])
        return
    if shape.ndim != 1 or edit.axis >= len(shape) or shape[edit.axis] in (-1, 0):
        return
    shape[edit.axis] = counts[0]
    node.input[k] = _new_constant(model, node.input[k], shape)


def _concat_part(
    model: onnx.ModelProto, node: onnx.NodeProto, operand: int, axis: int, count: int
) -> None:
    """A target shape computed as a Concat (`ComputedShapes.layout`): where entry `axis`
    comes from a stored part, that part is rewritten; an entry copied from the input adapts
    by itself, and the tracer froze the channels of any other."""
    found = ComputedShapes(model, stored_tensor_names(model)).layout(node, operand)
    positions = found[0] if found is not None else []
    if axis >= len(positions) or positions[axis][2] != STORED:
        return
    part, i, _ = positions[axis]
    values = np.array(read_stored(model, part), dtype=np.int64)
    if values.reshape(-1)[i] in (-1, 0):
        return
    values.reshape(-1)[i] = count
    concat = next(n for n in model.graph.node if node.input[operand] in n.output)
    concat.input[list(concat.input).index(part)] = _new_constant(model, part, values)


def _slice(model: onnx.ModelProto, node: onnx.NodeProto, edit: Edit, counts: list[int]) -> None:
    """Entry `edit.axis` of the bounds: the kept channels before the range, then after it
    (the tracer only records Slices whose bounds the model stores)."""
    start, end = counts[0], counts[0] + counts[1]
    if _opset(model) < 10:
        attrs = {a.name: list(a.ints) for a in node.attribute}
        for key, value in (("starts", start), ("ends", end)):
            attrs[key][edit.axis] = value
            _set_attr(node, key, attrs[key])
        return
    for k, value in ((1, start), (2, end)):
        bounds = np.array(read_stored(model, node.input[k]))
        bounds.reshape(-1)[edit.axis] = value
        node.input[k] = _new_constant(model, node.input[k], bounds)


_EDITS = {"group": _group, "split": _split, "reshape": _reshape, "shape": _reshape, "slice": _slice}


def check_equivalent(
    masked: onnx.ModelProto,
    compact: onnx.ModelProto,
    shapes: dict[str, tuple[int, ...]],
    *,
    rtol: float = 1e-4,
    seed: int = 0,
) -> float:
    """Run both models on the same random inputs; raise unless every output agrees within
    `rtol` of its scale. Returns the largest relative difference."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    initializers = {t.name for t in masked.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in masked.graph.input:
        if vi.name in initializers:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        shape = shapes[vi.name]
        if np.issubdtype(dtype, np.integer):
            feeds[vi.name] = rng.integers(0, 4, shape).astype(dtype)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    outs = []
    for m in (masked, compact):
        try:
            sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            outs.append(sess.run(None, feeds))
        except Exception as e:  # noqa: BLE001 - ORT raises many types
            raise OnnxflowError(f"the compact model does not run: {one_line(e)}") from None
    worst = 0.0
    for (a, b), vi in zip(zip(*outs, strict=True), masked.graph.output, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise OnnxflowError(
                f"the compact model's output {vi.name!r} has shape {b.shape}, not {a.shape}"
            )
        if not np.issubdtype(a.dtype, np.floating):
            if not np.array_equal(a, b):
                raise OnnxflowError(f"the compact model's output {vi.name!r} differs")
            continue
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        rel = diff / scale if scale > 0 else diff
        worst = max(worst, rel)
        if rel > rtol:
            raise OnnxflowError(
                f"the compact model's output {vi.name!r} differs from the masked original "
                f"(relative {rel:.2e}); please report this model"
            )
    return worst
