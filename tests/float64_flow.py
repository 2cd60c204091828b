"""The flow model run in float64 by onnx's reference evaluator: an oracle for scale safety.

onnxruntime has no float64 Conv on CPU, which is why onnxflow's flow model runs in float32
with log-units. The same graph with every float32 tensor made float64 computes the same
scores with 7x more exponent range (underflow at e^-745 instead of e^-103), in numpy. Where
the float32 engine scores a weight 0 and this scores it positive, float32 lost it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_conv import Conv as _RefConv
from onnx.reference.ops.op_conv_transpose import ConvTranspose as _RefConvTranspose

from onnxflow.flow.engine import FlowEngine


def _by_group(run, X, W, B, group, attrs):
    """A reference conv op one group at a time: its grouped paths mishandle a batch > 1 or
    several channels per group. Conv and ConvTranspose both split X on axis 1, W on 0."""
    g = int(group or 1)
    parts = [
        run(x, w, None, group=1, **attrs)[0]
        for x, w in zip(np.split(X, g, axis=1), np.split(W, g, axis=0), strict=True)
    ]
    y = np.concatenate(parts, axis=1)
    if B is not None:
        y = y + B.reshape(1, -1, *[1] * (y.ndim - 2))
    return (y,)


class Conv(_RefConv):
    op_domain = ""

    def _run(
        self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None,
        pads=None, strides=None,
    ):  # fmt: skip
        attrs = dict(auto_pad=auto_pad, dilations=dilations, kernel_shape=kernel_shape,
                     pads=pads, strides=strides)  # fmt: skip
        return _by_group(super()._run, X, W, B, group, attrs)


class ConvTranspose(_RefConvTranspose):
    op_domain = ""

    def _run(
        self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None,
        output_padding=None, output_shape=None, pads=None, strides=None,
    ):  # fmt: skip
        attrs = dict(auto_pad=auto_pad, dilations=dilations, kernel_shape=kernel_shape,
                     output_padding=output_padding, output_shape=output_shape, pads=pads,
                     strides=strides)  # fmt: skip
        return _by_group(super()._run, X, W, B, group, attrs)


_OPS = [Conv, ConvTranspose]


def _to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT:
            g.initializer[i].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name)
            )
    for v in [*g.input, *g.output]:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(
                    numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name)
                )
    return m


def float64_log_scores(engine: FlowEngine) -> dict[str, np.ndarray]:
    """Log-scores of the engine's current weights, computed in float64 (-inf where 0)."""
    flow = engine.flow
    ev = ReferenceEvaluator(_to_float64(flow.model), new_ops=_OPS)
    feeds = {flow.weight_inputs[n]: w.astype(np.float64) for n, w in engine.weights.items()}
    wanted = [s for s, _ in flow.scores.values()] + [
        u for _, u in flow.scores.values() if u is not None
    ]
    wanted = list(dict.fromkeys(wanted))
    results = dict(zip(wanted, ev.run(wanted, feeds), strict=True))
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, (score, unit) in flow.scores.items():
            u = 0.0 if unit is None else np.asarray(results[unit], np.float64)
            log = np.log(np.asarray(results[score], np.float64)) + u
            out[name] = np.where(np.isnan(log), -np.inf, log)
    for layer in engine.dag.layers:
        out.setdefault(layer.name, np.full(layer.shape, -np.inf))
    return out


__all__ = ["float64_log_scores", "helper"]
