"""Resize and Upsample, in every mode.

Nearest-neighbour resampling copies inputs: its index map is read off one onnxruntime run
at build time, and flow is gathered forward and scattered back.

Linear and cubic resampling (with any coordinate transformation, antialiasing, roi...) are
linear maps, separable per axis: `Y = M_0 ⊗ M_1 ⊗ ... X`. Each axis' interpolation matrix
`M_a` is read off onnxruntime at build time, by resizing one-hot inputs along that axis
alone, and the decomposition is checked against one run of the op as it is. The positive
linearization uses `|M_a|` (cubic interpolation has negative coefficients): forward is one
MatMul by `|M_a|` per resized axis, backward one MatMul by `|M_a|ᵀ`. A constant
`extrapolation_value` is a shift and carries no flow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxflow.errors import OnnxflowError, one_line
from onnxflow.flow.builder import Flow, FlowBuilder, Shape
from onnxflow.flow.registry import FlowRule, flow_rule
from onnxflow.flow.rules.indexing import _gather, _scatter_back, _values

# Largest axis length whose interpolation matrix is read off one-hot runs.
_MAX_AXIS = 1 << 14


@flow_rule("Resize", "Upsample")
class Resize(FlowRule):
    """Nearest mode: a gather by a static index map. Linear and cubic: |M_a| per axis."""

    def forward(self, g, node, x, *rest, **attrs):
        if attrs.get("mode", "nearest") == "nearest":
            index = _resize_index(node, x, rest, attrs)
            node.saved["index"] = index
            return _gather(g, x, index, node.out_shapes[0])
        mats = _resize_matrices(node, x, rest, attrs)
        node.saved["mats"] = mats
        t, shape = x.tensor, x.shape
        for a, m in enumerate(mats):
            if m is not None:
                t, shape = _along_axis(g, t, shape, a, np.abs(m))
        return g.like(t, x)

    def backward(self, g, node, grads, x, *rest, **attrs):
        (gy,) = grads
        none = [None] * len(rest)
        if "index" in node.saved:
            return [_scatter_back(g, gy, node.saved["index"], x.shape), *none]
        t, shape = gy.tensor, tuple(node.out_shapes[0])
        for a, m in reversed(list(enumerate(node.saved["mats"]))):
            if m is not None:
                t, shape = _along_axis(g, t, shape, a, np.abs(m).T)
        return [g.like(t, gy), *none]


def _along_axis(g: FlowBuilder, t: str, shape: Shape, axis: int, mat: np.ndarray) -> Any:
    """`mat` (m, n) applied along `axis` (length n) of `t`: the new tensor and its shape."""
    m, n = mat.shape
    before, after = int(np.prod(shape[:axis])), int(np.prod(shape[axis + 1 :]))
    new_shape = (*shape[:axis], m, *shape[axis + 1 :])
    if after == 1:  # one GEMM: (P, n) @ (n, m)
        y = g.node("MatMul", [g.reshape(t, [before, n]), g.f32(mat.T, "interp")])
    else:  # (m, n) @ (P, n, Q), broadcast over P
        y = g.node("MatMul", [g.f32(mat, "interp"), g.reshape(t, [before, n, after])])
    return g.reshape(y, list(new_shape)), new_shape


def _runner(node, op_type: str, opset: int, shape: Shape, consts, attrs):
    """One Resize/Upsample node on inputs of `shape` with constant operands `consts` (None:
    absent), as a function of the input (one onnxruntime session, many runs)."""
    from onnxflow.runtime import ort_session

    names, inits = ["x"], []
    for i, v in enumerate(consts):
        if v is None:
            names.append("")
            continue
        inits.append(numpy_helper.from_array(np.asarray(v), f"c{i}"))
        names.append(f"c{i}")
    while names and names[-1] == "":
        names.pop()
    graph = helper.make_graph(
        [helper.make_node(op_type, names, ["y"], **attrs)],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8

    def fail(e: Exception) -> OnnxflowError:
        return OnnxflowError(
            f"node {node.name!r}: cannot evaluate {node.op_type}: {one_line(e, 200)}"
        )

    try:
        sess = ort_session(model.SerializeToString(), "cpu")
    except Exception as e:  # noqa: BLE001 - any failure: the op's attributes are not usable
        raise fail(e) from None

    def run(x: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(sess.run(None, {"x": x.astype(np.float32)})[0])
        except Exception as e:  # noqa: BLE001 - as above
            raise fail(e) from None

    return run


def _run_one(node, op_type: str, opset: int, x: np.ndarray, consts, attrs) -> np.ndarray:
    return _runner(node, op_type, opset, x.shape, consts, attrs)(x)


def _opset(node, rest) -> int:
    """The opset whose spelling of the op this is: Upsample-7 has `scales` as an attribute,
    Upsample-9 as an input; Resize-10 has (X, scales), Resize-11+ (X, roi, scales, sizes)."""
    if node.op_type == "Upsample":
        return 9 if rest else 8
    return 10 if len(rest) == 1 else 19


def _const_values(node, rest) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = []
    for c in rest:
        if c is None:
            out.append(None)
        else:
            out.append(_values(node, c, "sizes/scales/roi"))
    return out


def _resize_index(node, x: Flow, rest, attrs) -> np.ndarray:
    """Flat input index of every output element, by running the op on the indices."""
    size = int(np.prod(x.shape))
    if size >= 2**24:
        raise OnnxflowError(f"node {node.name!r}: {node.op_type} input too large to index")
    values = np.arange(size, dtype=np.float32).reshape(x.shape)  # exact below 2^24
    out = _run_one(node, node.op_type, _opset(node, rest), values, _const_values(node, rest), attrs)
    return out.astype(np.int64)


def _unsupported(node, attrs, why: str) -> OnnxflowError:
    mode = attrs.get("mode", "nearest")
    return OnnxflowError(
        f"node {node.name!r}: {node.op_type} mode {mode!r} has no flow rule yet ({why})"
    )


def _resize_matrices(node, x: Flow, rest, attrs) -> list[np.ndarray | None]:
    """The interpolation matrix (out_a, in_a) of every resized axis, None for the others.

    Each is read off onnxruntime by resizing one-hot vectors along that axis alone (every
    other axis of length 1, scale 1); then the product of the matrices is checked against
    one run of the op as it is, so a mode that is not separable is refused, not mis-scored.
    """
    in_shape, out_shape = tuple(x.shape), tuple(node.out_shapes[0])
    rank = len(in_shape)
    opset = _opset(node, rest)
    consts = _const_values(node, rest)
    per_axis = _per_axis_operands(node, in_shape, out_shape, consts, attrs, opset)
    mats: list[np.ndarray | None] = []
    for a in range(rank):
        n, m = in_shape[a], out_shape[a]
        make = per_axis(a)
        if make is None:  # scale 1, same length, no crop: the identity
            if n != m:
                raise _unsupported(node, attrs, f"axis {a} changes length at scale 1")
            mats.append(None)
            continue
        if n > _MAX_AXIS or m > _MAX_AXIS:
            raise _unsupported(node, attrs, f"axis {a} longer than {_MAX_AXIS}")
        op_consts, op_attrs = make
        shape = [1] * rank
        shape[a] = n
        run = _runner(node, node.op_type, opset, tuple(shape), op_consts, op_attrs)
        zero = run(np.zeros(shape, np.float32))
        mat = np.zeros((m, n), np.float64)
        for i in range(n):
            onehot = np.zeros(n, np.float32)
            onehot[i] = 1.0
            y = run(onehot.reshape(shape))
            if y.size != m:
                raise _unsupported(node, attrs, f"axis {a} resized alone gives {y.shape}, not {m}")
            mat[:, i] = (y - zero).reshape(m)
        mats.append(None if n == m and np.array_equal(mat, np.eye(n)) else mat)
    _check_separable(node, x, rest, attrs, consts, opset, mats)
    return mats


def _per_axis_operands(node, in_shape, out_shape, consts, attrs, opset):
    """A function of the axis: the operands and attributes that resize that axis alone, as
    the node resizes it (its scale, roi and output length), or None if the node leaves it."""
    rank = len(in_shape)
    base = {k: v for k, v in attrs.items() if k not in ("axes", "keep_aspect_ratio_policy")}
    if "extrapolation_value" in base:
        base["extrapolation_value"] = 0.0
    if node.op_type == "Upsample" or opset == 10:  # scales only (attribute or input)
        scales = np.asarray(
            attrs["scales"] if node.op_type == "Upsample" and opset == 8 else consts[0],
            np.float32,
        )

        def upsample(a: int):
            if float(scales[a]) == 1.0:
                return None
            s = np.ones(rank, np.float32)
            s[a] = scales[a]
            if opset == 8:
                return [], {**base, "scales": s.tolist()}
            return [s], base

        return upsample

    roi, scales, sizes = (list(consts) + [None] * 3)[:3]
    axes = attrs.get("axes")
    axes = list(range(rank)) if axes is None else [int(v) % rank for v in axes]
    full_scale: list[float | None] = [1.0] * rank
    if scales is not None and scales.size:
        for i, ax in enumerate(axes):
            full_scale[ax] = float(scales[i])
        use_sizes = False
    elif sizes is not None and sizes.size:
        policy = attrs.get("keep_aspect_ratio_policy", "stretch")
        policy = policy.decode() if isinstance(policy, bytes) else policy
        ratios = [float(sizes[i]) / in_shape[ax] for i, ax in enumerate(axes)]
        if policy == "stretch":
            use_sizes = True
            for ax in axes:
                full_scale[ax] = None  # output length given: scale = out / in
        else:
            common = min(ratios) if policy == "not_larger" else max(ratios)
            use_sizes = False
            for ax in axes:
                full_scale[ax] = common
    else:
        raise _unsupported(node, attrs, "neither scales nor sizes is given")
    mode = attrs.get("coordinate_transformation_mode", "half_pixel")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    crop = mode == "tf_crop_and_resize"
    roi_full = np.array([0.0] * rank + [1.0] * rank, np.float32)
    if crop:
        if roi is None or roi.size != 2 * len(axes):
            raise _unsupported(node, attrs, "tf_crop_and_resize needs a roi for every resized axis")
        for i, ax in enumerate(axes):
            roi_full[ax], roi_full[rank + ax] = roi[i], roi[len(axes) + i]

    def resize(a: int):
        identity_roi = not crop or (roi_full[a] == 0.0 and roi_full[rank + a] == 1.0)
        same = in_shape[a] == out_shape[a]
        if identity_roi and same and full_scale[a] in (1.0, None):
            return None
        r = np.array([0.0] * rank + [1.0] * rank, np.float32)
        r[a], r[rank + a] = roi_full[a], roi_full[rank + a]
        roi_in = r if crop else None
        if use_sizes:
            sz = np.ones(rank, np.int64)
            sz[a] = out_shape[a]
            return [roi_in, None, sz], base
        s = np.ones(rank, np.float32)
        s[a] = 1.0 if full_scale[a] is None else full_scale[a]
        return [roi_in, s], base

    return resize


def _check_separable(node, x: Flow, rest, attrs, consts, opset, mats) -> None:
    """The op on a random input equals the per-axis matrices applied one after another."""
    rng = np.random.default_rng(0)
    values = rng.uniform(0.5, 1.5, size=x.shape).astype(np.float32)
    run = _runner(node, node.op_type, opset, tuple(x.shape), consts, attrs)
    want = run(values).astype(np.float64) - run(np.zeros_like(values))
    got = values.astype(np.float64)
    for a, m in enumerate(mats):
        if m is not None:
            got = np.moveaxis(np.tensordot(m, got, axes=([1], [a])), 0, a)
    if got.shape != want.shape or not np.allclose(
        got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max(initial=0.0)))
    ):
        raise _unsupported(node, attrs, "the op is not separable per axis as read off onnxruntime")
