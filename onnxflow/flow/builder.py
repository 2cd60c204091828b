"""Primitives for writing the flow model: scaled flows and the nodes that combine them.

Synaptic flow grows geometrically with depth (R of a ResNet-50 overflows float32) and
shrinks the same way at high compression, while onnxruntime has no float64 Conv. So a flow is
carried as a float32 tensor `t` plus a float64 scalar `s`, its natural-log unit: the true
flow is `t * exp(s)`. Ops that multiply magnitudes renormalize their output to max 1 and add
the log of the divisor to `s` (`rescale`); flows meeting at a sum are first brought to the
larger unit (`add`, `align`). Divisions by the float32 maximum cost one rounding, so scores
keep float32 accuracy at any depth.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Shape = tuple[int, ...]

_F32_TINY = float(np.finfo(np.float32).smallest_subnormal)


@dataclass(frozen=True)
class Flow:
    """A flow tensor of the linearized graph: true value `tensor * exp(scale)`."""

    tensor: str
    scale: str
    shape: Shape = ()
    needs_grad: bool = False
    """Whether a prunable weight lies upstream, so backward flow must reach this tensor."""


@dataclass(frozen=True)
class Const:
    """A tensor that does not depend on the model input (shape operands, BN statistics...).

    `source` is anything with a `.values` array (a graph-surgeon Constant, loaded lazily),
    or None for tensors that the flow model computes rather than knows now.
    """

    name: str
    shape: Shape
    source: Any = None

    @property
    def values(self) -> np.ndarray | None:
        return None if self.source is None else np.asarray(self.source.values)


@dataclass
class NodeContext:
    """What a rule may know about the node besides its inputs and attributes."""

    name: str
    op_type: str
    out_shapes: list[Shape]
    saved: dict[str, Any] = field(default_factory=dict)
    """Forward may leave tensor names here for backward (e.g. MaxPool's indices)."""


class FlowBuilder:
    """Accumulates the nodes, initializers, inputs and outputs of the flow model."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._counter = itertools.count()
        self._const_cache: dict[str, str] = {}
        self._reshapes: dict[tuple[str, tuple[int, ...]], str] = {}
        self.weights: dict[str, str] = {}
        """Prunable weight name -> flow-model input carrying |W| * mask."""
        self.zero_scale = self.const(np.array(0.0), "scale0")

    # ---- plain graph construction -------------------------------------------------------
    def fresh(self, hint: str) -> str:
        return f"flow/{next(self._counter)}/{hint}"

    def node(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> Any:
        """Append a node; returns its output name, or a list of names when `n_out > 1`."""
        outs = [self.fresh(op_type) for _ in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value: np.ndarray | float | Sequence[int], hint: str = "const") -> str:
        arr = np.asarray(value)
        key = f"{arr.dtype}{arr.shape}{arr.tobytes().hex()}" if arr.size <= 64 else None
        if key is not None and key in self._const_cache:
            return self._const_cache[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self._const_cache[key] = name
        return name

    def f32(self, value: float | np.ndarray, hint: str = "c") -> str:
        return self.const(np.asarray(value, dtype=np.float32), hint)

    def i64(self, value: Sequence[int] | int, hint: str = "i") -> str:
        return self.const(np.asarray(value, dtype=np.int64), hint)

    def const_input(self, c: Const, *, absolute: bool = False) -> str:
        """Name of `c` in the flow model (float values as float32, optionally |c|)."""
        arr = c.values
        if arr is None:
            return c.name
        if np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
            if absolute:
                arr = np.abs(arr)
        return self.const(arr, "const")

    def weight_input(self, name: str, shape: Shape) -> Flow:
        """The prunable weight `name` as a flow of unit 1: a flow-model input fed |W| * mask.

        Weights enter the flow model as flows, so ops between a weight and its layer
        (Transpose, Reshape, Cast...) carry its flow back like any other tensor.
        """
        if name not in self.weights:
            self.weights[name] = self.add_input(f"abs:{name}", TensorProto.FLOAT, shape)
        return Flow(self.weights[name], self.zero_scale, shape, needs_grad=True)

    def add_input(self, name: str, elem_type: int, shape: Shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def add_output(self, name: str, elem_type: int) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, None))

    def ones(self, shape: Shape) -> str:
        return self.node(
            "ConstantOfShape",
            [self.i64(list(shape), "shape")],
            value=numpy_helper.from_array(np.ones(1, np.float32)),
        )

    def zeros(self, shape: Shape) -> str:
        return self.node(
            "ConstantOfShape",
            [self.i64(list(shape), "shape")],
            value=numpy_helper.from_array(np.zeros(1, np.float32)),
        )

    def sum(self, xs: Sequence[str]) -> str:
        """Elementwise sum of two or more tensors (Add for two: onnxruntime's variadic Sum
        costs several times more per call, which adds up over the scalar units)."""
        return self.node("Add" if len(xs) == 2 else "Sum", list(xs))

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        """`x` reshaped; a tensor reshaped alike twice (forward and backward) is one node."""
        key = (x, tuple(shape))
        if key not in self._reshapes:
            self._reshapes[key] = self.node("Reshape", [x, self.i64(list(shape), "shape")])
        return self._reshapes[key]

    def reduce(self, op: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        """ReduceSum/ReduceMean/ReduceMax over `axes` in this opset's spelling."""
        if op == "ReduceSum" or self.opset >= 18:
            return self.node(op, [x, self.i64(list(axes), "axes")], keepdims=keepdims)
        return self.node(op, [x], axes=list(axes), keepdims=keepdims)

    def reduce_to(self, x: str, from_shape: Shape, to_shape: Shape) -> str:
        """Sum `x` over the axes that broadcasting expanded from `to_shape` to `from_shape`."""
        if tuple(from_shape) == tuple(to_shape):
            return x
        lead = len(from_shape) - len(to_shape)
        axes = list(range(lead)) + [
            lead + i for i, d in enumerate(to_shape) if d == 1 and from_shape[lead + i] != 1
        ]
        if axes:
            x = self.reduce("ReduceSum", x, axes, keepdims=1)
        return self.reshape(x, to_shape)

    def expand_to(self, x: str, from_shape: Shape, to_shape: Shape) -> str:
        if tuple(from_shape) == tuple(to_shape):
            return x
        return self.node("Expand", [x, self.i64(list(to_shape), "shape")])

    # ---- scaled flows --------------------------------------------------------------------
    def like(self, tensor: str, ref: Flow | str) -> Flow:
        """A flow with the same unit as `ref` (a Flow or a scale name)."""
        return Flow(tensor, ref if isinstance(ref, str) else ref.scale)

    def map(self, f: Flow, fn: Callable[[str], str]) -> Flow:
        """Apply a scale-preserving (linear, unit-free) op to a flow's tensor."""
        return Flow(fn(f.tensor), f.scale)

    def scale_sum(self, *scales: str) -> str:
        """Unit of a product of flows."""
        scales = tuple(s for s in scales if s != self.zero_scale) or (self.zero_scale,)
        if len(scales) == 1:
            return scales[0]
        return self.sum(scales)

    def rescale(self, f: Flow, shape: Shape | None = None) -> Flow:
        """Divide by the tensor's max and move its log into the unit.

        An all-zero flow (every path through it pruned) gets unit log(0) = -inf, so it cannot
        outweigh a real flow when aligned with it later; its tensor stays 0 (the divisor is
        never below the smallest float32, so 0/0 cannot occur). So does an empty one (its
        max is -inf), unless its `shape` shows it is not empty.
        """
        mx = self.node("ReduceMax", [f.tensor], keepdims=0)
        if shape is None or 0 in shape:
            mx = self.node("Relu", [mx])
        tensor = self.node("Div", [f.tensor, self.node("Max", [mx, self.f32(_F32_TINY)])])
        log = self.node("Log", [self.node("Cast", [mx], to=TensorProto.DOUBLE)])
        return Flow(tensor, self.node("Add", [f.scale, log]))

    def align(self, flows: Sequence[Flow]) -> tuple[list[str], str]:
        """Express several flows in one common unit (the largest): tensors and that unit."""
        scales = [f.scale for f in flows]
        if len(set(scales)) == 1:
            return [f.tensor for f in flows], scales[0]
        top = self.node("Max", scales)
        safe = self.node(
            "Where", [self.node("IsInf", [top]), self.zero_scale, top]
        )  # all -inf: every flow is zero, any finite unit will do for the ratios
        tensors = []
        for f in flows:
            ratio = self.node(
                "Cast",
                [self.node("Exp", [self.node("Sub", [f.scale, safe])])],
                to=TensorProto.FLOAT,
            )
            tensors.append(self.node("Mul", [f.tensor, ratio]))
        return tensors, top

    def add(self, flows: Sequence[Flow]) -> Flow:
        """Sum of flows (with numpy broadcasting), in the largest unit."""
        if len(flows) == 1:
            return flows[0]
        tensors, scale = self.align(flows)
        return Flow(self.sum(tensors), scale)
