"""Primitives for writing the flow model: scaled flows and the nodes that combine them.

Synaptic flow grows geometrically with depth (R of a ResNet-50 overflows float32) and
shrinks the same way at high compression, while onnxruntime has no float64 Conv. So a flow is
carried as a float32 tensor `t` plus a float64 scalar `s`, its natural-log unit: the true
flow is `t * exp(s)`. Ops that multiply magnitudes renormalize their output to max 1 and add
the log of the divisor to `s` (`rescale`); flows meeting at a sum are first brought to the
unit of the largest of them (`add`, `align`). Divisions by the float32 maximum cost one
rounding, so scores keep float32 accuracy at any depth.

Flows of very different size that meet at a Concat stay apart: the output gets one unit per
channel (`Flow.unit_shape`), ops that keep channels apart carry it, and weight layers
resolve it per input channel, so a weight reading a channel 200 nats below its neighbours
still gets its exact (tiny, positive) score with a per-channel unit.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Shape = tuple[int, ...]
T = TypeVar("T")

_F32_TINY = float(np.finfo(np.float32).smallest_subnormal)
_F64 = TensorProto.DOUBLE


@dataclass(frozen=True)
class Flow:
    """A flow tensor of the linearized graph: true value `tensor * exp(scale)`."""

    tensor: str
    scale: str
    shape: Shape = ()
    needs_grad: bool = False
    """Whether a prunable weight lies upstream, so backward flow must reach this tensor."""
    unit_shape: Shape = ()
    """Shape of the log-unit `scale`: () for one unit for the whole tensor, or `(1, C, 1...)`
    (the tensor's rank) for one unit per channel (axis 1). Concat gives its output one unit
    per channel, so that flows of very different size keep their own (`FlowBuilder.concat`);
    rules that do not declare `FlowRule.channel_units` receive such flows resolved to one
    unit (`FlowBuilder.resolve`)."""

    @property
    def per_channel(self) -> bool:
        return len(self.unit_shape) > 0


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

    def once(self, key: str, make: Callable[[], T]) -> T:
        """`saved[key]`, made by `make()` the first time it is asked for: nodes that forward
        and backward (or two products) share are emitted once."""
        if key not in self.saved:
            self.saved[key] = make()
        return self.saved[key]


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
        self._at_peak: set[tuple[str, str]] = set()
        """(tensor, unit) pairs known to peak at their unit: max 1 after `rescale`, at least 1
        after a sum in the peak unit (or all zero with unit -inf). `peak` needs no pass over
        them, which keeps the alignment at residual sums as cheap as before."""
        self.joins: dict[str, str] = {}
        """Node name -> float64 output: how many nats the flows joined there into one float32
        tensor lie below the largest (`align(..., watch=...)`); see `FlowModel.joins`."""

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
        if 0 in shape:  # an empty tensor (a slice left empty, e.g. rotary's pass-through
            # part at full rotary width); Reshape would read the 0 as "copy this dimension"
            return self.zeros(tuple(shape))
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
        if isinstance(ref, str):
            return Flow(tensor, ref)
        return Flow(tensor, ref.scale, unit_shape=ref.unit_shape)

    def map(self, f: Flow, fn: Callable[[str], str]) -> Flow:
        """Apply a scale-preserving (linear, unit-free) op to a flow's tensor."""
        return Flow(fn(f.tensor), f.scale, unit_shape=f.unit_shape)

    def scale_sum(self, *scales: str) -> str:
        """Unit of a product of flows."""
        scales = tuple(s for s in scales if s != self.zero_scale) or (self.zero_scale,)
        if len(scales) == 1:
            return scales[0]
        return self.sum(scales)

    def _channel_max(self, f: Flow, known: bool) -> str:
        """The tensor's max: one scalar, or (1, C, 1...) per channel for a per-channel unit.
        An empty tensor's max is -inf; unless its shape is `known` not to be empty, Relu
        makes it 0 (a dead flow)."""
        if f.per_channel:
            axes = [0, *range(2, len(f.unit_shape))]
            mx = self.reduce("ReduceMax", f.tensor, axes, keepdims=1)
        else:
            mx = self.node("ReduceMax", [f.tensor], keepdims=0)
        return mx if known else self.node("Relu", [mx])

    def rescale(self, f: Flow, shape: Shape | None = None) -> Flow:
        """Divide by the tensor's max (per channel for a per-channel unit) and move its log
        into the unit.

        An all-zero flow (every path through it pruned) gets unit log(0) = -inf, so it cannot
        outweigh a real flow when aligned with it later; its tensor stays 0 (the divisor is
        never below the smallest float32, so 0/0 cannot occur). So does an empty one (its
        max is -inf), unless its `shape` shows it is not empty.
        """
        mx = self._channel_max(f, known=shape is not None and 0 not in shape)
        tensor = self.node("Div", [f.tensor, self.node("Max", [mx, self.f32(_F32_TINY)])])
        log = self.node("Log", [self.node("Cast", [mx], to=TensorProto.DOUBLE)])
        out = Flow(tensor, self.node("Add", [f.scale, log]), unit_shape=f.unit_shape)
        self._at_peak.add((out.tensor, out.scale))
        return out

    def peak(self, f: Flow) -> str:
        """Log of the flow's largest value (per channel for a per-channel unit): its unit
        plus the log of its tensor's max; -inf for an all-zero flow, whatever its unit."""
        if (f.tensor, f.scale) in self._at_peak:
            return f.scale
        mx = self._channel_max(f, known=False)
        return self.node("Add", [f.scale, self.node("Log", [self.node("Cast", [mx], to=_F64)])])

    def _finite(self, top: str) -> str:
        """`top` made finite: all -inf means every flow is zero, and any unit will do."""
        return self.node("Where", [self.node("IsInf", [top]), self.zero_scale, top])

    def _ratio(self, f: Flow, safe: str) -> str:
        """exp(unit - safe) as float32, `safe` being the finite peak unit of an alignment.

        A flow not known to peak at its unit may have a unit above `safe` (its tensor all
        zero, or tiny): its ratio is capped at e^80 so that it stays finite (0 * inf would
        be NaN)."""
        diff = self.node("Sub", [f.scale, safe])
        if (f.tensor, f.scale) not in self._at_peak:
            diff = self.node("Min", [diff, self.const(np.array(80.0), "exp_cap")])
        return self.node("Cast", [self.node("Exp", [diff])], to=TensorProto.FLOAT)

    def align(self, flows: Sequence[Flow], watch: str | None = None) -> tuple[list[str], str]:
        """Express several flows in one common unit: tensors and that unit.

        The common unit is the largest *peak* (unit + log of the tensor's max), not the
        largest unit: a flow that is all zero but kept a large unit (zeroed by a constant
        factor, which does not renormalize) must not push the live flows below float32's
        range (x + 0 would become 0). Per-channel units broadcast: the result is per
        channel if any input is.

        `watch`: a node name under which the gap between the highest and the lowest peak
        (all-zero flows left out) becomes a model output (`joins`): where flows are joined
        side by side (a Concat along a non-channel axis), a part far below the others
        loses its precision, then underflows to 0, and everything computed from it after.
        """
        scales = [f.scale for f in flows]
        if len(set(scales)) == 1:
            return [f.tensor for f in flows], scales[0]
        peaks = [self.peak(f) for f in flows]
        top = self.node("Max", peaks)
        if watch is not None:
            live = [self.node("Where", [self.node("IsInf", [p]), top, p]) for p in peaks]
            self.joins[watch] = self.node("Sub", [top, self.node("Min", live)])
        safe = self._finite(top)
        return [self.node("Mul", [f.tensor, self._ratio(f, safe)]) for f in flows], top

    def add(self, flows: Sequence[Flow]) -> Flow:
        """Sum of flows (with numpy broadcasting), in the largest unit."""
        if len(flows) == 1:
            return flows[0]
        tensors, scale = self.align(flows)
        unit_shape = tuple(np.broadcast_shapes(*(f.unit_shape for f in flows)))
        out = Flow(self.sum(tensors), scale, unit_shape=unit_shape)
        if len({f.scale for f in flows}) > 1 or all(
            (f.tensor, f.scale) in self._at_peak for f in flows
        ):
            self._at_peak.add((out.tensor, out.scale))
        return out

    def resolve(self, f: Flow) -> Flow:
        """A per-channel-unit flow in one unit (its largest peak), for ops that mix channels
        or move axis 1. Channels more than ~103 nats below the largest underflow to 0 here:
        they are negligible in any sum with the others, but rules that keep channels apart
        (`FlowRule.channel_units`) take the flow unresolved and stay exact."""
        if not f.per_channel:
            return f
        top = self.node("ReduceMax", [self.peak(f)], keepdims=0)
        tensor = self.node("Mul", [f.tensor, self._ratio(f, self._finite(top))])
        return Flow(tensor, top, f.shape, f.needs_grad)

    def channel_unit(self, f: Flow, rank: int, channels: int) -> str:
        """The unit of `f` as a float64 tensor of shape (1, channels, 1...) of `rank` dims."""
        shape = [1, channels] + [1] * (rank - 2)
        if f.per_channel:
            return f.scale
        return self.node("Expand", [self.reshape(f.scale, [1] * rank), self.i64(shape, "shape")])

    def unit_as(self, f: Flow, shape: Sequence[int]) -> str:
        """A per-channel unit reshaped (e.g. onto a weight's input-channel axis)."""
        return self.reshape(f.scale, list(shape))
