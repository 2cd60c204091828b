"""Build the flow model: one ONNX graph that computes every prunable weight's SynFlow score.

Walking the analysis graph in topological order, each node's flow rule emits the forward
flow (ones pushed from the inputs through |W|); walking back, the rules emit the transposed
flow (ones pulled from the outputs). At each prunable weight the two meet:
score = |W| * dR/d|W|, returned as a float32 tensor with a float64 log-unit. Masked weights
are fed in at run time, so one flow model serves every pruning iteration.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from onnxflow.dag import WeightDag, is_float_dtype
from onnxflow.errors import OnnxflowError, UnsupportedOpError
from onnxflow.flow.builder import Const, Flow, FlowBuilder, NodeContext
from onnxflow.flow.fold import batchnorm_folds
from onnxflow.flow.reach import flow_opset, flow_reach, is_lookup
from onnxflow.flow.registry import FlowRule, RuleRegistry, default_rules
from onnxflow.flow.rules.elementwise import PassThrough
from onnxflow.flow.sources import data_source, lookup_forward
from onnxflow.flow.zero_init import ones_if_zero_init

PASS_THROUGH = PassThrough()
JOIN_RANGE = 87.0
"""Nats below which a float32 value relative to its tensor's largest (1) is no longer a
normal number (e^-87.3): past this gap, a join's smaller parts lose precision."""


@dataclass
class FlowModel:
    model: onnx.ModelProto
    weight_inputs: dict[str, str]
    """Weight name -> flow-model input fed with |W| * mask."""
    scores: dict[str, tuple[str, str | None]]
    """Weight name -> (score tensor, its float64 log-unit or None for unit 1); absent: no
    path from the weight to an output."""
    output_flows: list[tuple[str, str | None]] = field(default_factory=list)
    """(float64 sum, log-unit) of each model output: R = sum of exp(log(sum) + unit)."""
    weight_factors: dict[str, np.ndarray] = field(default_factory=dict)
    """Weight name -> factor folded into it: the input is fed |W| * mask * factor."""
    flowing: frozenset[str] = frozenset()
    """Analysis tensors that carried flow: what `flow_reach` predicts (tests hold them equal)."""
    unit_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Log-unit output -> its shape, for the units that are not scalars: a weight reading
    channels of very different flow gets one unit per input channel, broadcastable to it."""
    joins: dict[str, str] = field(default_factory=dict)
    """Analysis node -> float64 output: the gap in nats between the largest and the
    smallest flow it joins side by side into one float32 tensor (a Concat along a
    non-channel axis of flows in different units). Beyond `JOIN_RANGE` the smaller parts
    lose precision in float32, and scores computed from them are inexact or 0."""


@dataclass
class _Step:
    node: gs.Node
    rule: FlowRule
    ctx: NodeContext
    inputs: list[Any]
    attrs: dict[str, Any]


def build_flow_model(
    graph: gs.Graph, dag: WeightDag, rules: RuleRegistry | None = None
) -> FlowModel:
    """The flow model of a normalized (static-shaped, toposorted) graph, with the rules of
    `rules` (default: the default registry). An op on the flow path without a rule is
    refused before anything is built; `flow_reach` decides, as it does for `inspect`."""
    rules = rules if rules is not None else default_rules()
    _refuse_missing_rules(graph, dag, rules)
    walk = _Walk(graph, dag, rules)
    walk.forward()  # ones from the inputs, through |W|
    totals = walk.seed_outputs()  # R: the sum of each float output that a weight reaches
    walk.backward()  # ones from the outputs, back to every weight
    scores, unit_shapes = walk.layer_scores()  # |W| times the flow that reaches it
    output_flows = _declare_outputs(walk.g, scores, totals)
    for gap in walk.g.joins.values():
        walk.g.add_output(gap, TensorProto.DOUBLE)
    return FlowModel(
        _onnx_model(walk.g, graph),
        dict(walk.g.weights),
        scores,
        output_flows,
        walk.factors,
        walk.flowing(),
        unit_shapes,
        dict(walk.g.joins),
    )


def _refuse_missing_rules(graph: gs.Graph, dag: WeightDag, rules: RuleRegistry) -> None:
    """Refuse the first op on the flow path without a rule (as `inspect` names it)."""
    missing = flow_reach(graph, (layer.name for layer in dag.layers), rules).missing
    if missing:
        node = missing[0]
        raise UnsupportedOpError(node.op, node.domain or "", node.name)


class _Walk:
    """One walk over the analysis graph, forward then back: the value of every tensor (a
    flow, or a constant the flow model copies), the steps that carried flow (walked back in
    reverse) and the backward flows gathered at each tensor."""

    def __init__(self, graph: gs.Graph, dag: WeightDag, rules: RuleRegistry) -> None:
        self.graph, self.dag, self.rules = graph, dag, rules
        self.opset = flow_opset(graph)
        self.g = FlowBuilder(self.opset)
        self.values: dict[str, Flow | Const] = {}
        self.derived: set[str] = set()
        """Non-flow values computed from the inputs (ids, shapes)."""
        self.steps: list[_Step] = []
        self.grads: dict[str, list[Flow]] = defaultdict(list)
        self.weights = {layer.name for layer in dag.layers}
        self.layer_nodes = {n for layer in dag.layers for n in layer.nodes}
        self._seed_inputs()
        self.factors, self.folded = batchnorm_folds(graph, dag)

    def _seed_inputs(self) -> None:
        """Float inputs carry ones; integer inputs (token ids, indices) are ones as data;
        each prunable weight is a flow-model input fed |W| * mask."""
        g = self.g
        for t in self.graph.inputs:
            shape = tuple(int(d) for d in t.shape)
            if is_float_dtype(t.dtype):
                self.values[t.name] = Flow(g.ones(shape), g.zero_scale, shape, needs_grad=False)
            else:
                source = gs.Constant(t.name, np.ones(shape, t.dtype))
                self.values[t.name] = Const(t.name, shape, source)
                self.derived.add(t.name)
        for layer in self.dag.layers:
            self.values[layer.name] = g.weight_input(layer.name, layer.shape)

    def value_of(self, t: gs.Tensor) -> Flow | Const | None:
        if t is None or t.name == "":
            return None
        if t.name in self.values:
            return self.values[t.name]
        if isinstance(t, gs.Constant):
            return Const(t.name, tuple(t.shape), ones_if_zero_init(t, self.dag.read_as_ones))
        raise OnnxflowError(f"tensor {t.name!r} is used before it is produced")

    # ---- forward ---------------------------------------------------------------------------
    def forward(self) -> None:
        for node in self.graph.nodes:
            inputs = [self.value_of(t) for t in node.inputs]
            if any(isinstance(v, Flow) for v in inputs):
                self._forward_step(node, inputs)
                continue
            # Shapes are static: what Shape/Size compute does not depend on the input's values.
            from_input = node.op not in ("Shape", "Size") and any(
                t.name in self.derived for t in node.inputs if t is not None
            )
            _copy_verbatim(self.g, node, inputs, self.values, self.derived if from_input else None)

    def _forward_step(self, node: gs.Node, inputs: list[Any]) -> None:
        """Run the node's rule forward and record the step for the walk back."""
        g = self.g
        if id(node) in self.folded:
            rule: FlowRule | None = PASS_THROUGH
        else:
            rule = self.rules.get(node.op, node.domain or "", self.opset)
        if rule is None:  # flow_reach missed it: still refused, never copied with a flow
            raise UnsupportedOpError(node.op, node.domain or "", node.name)
        ctx = NodeContext(node.name, node.op, [_shape(t) for t in node.outputs])
        if node.name in self.layer_nodes:
            inputs = _layer_inputs(g, node, inputs, ctx)
        attrs = dict(node.attrs)
        if not rule.channel_units:
            inputs = [g.resolve(v) if isinstance(v, Flow) else v for v in inputs]
        outs = _as_list(rule.forward(g, ctx, *inputs, **attrs))
        needs = any(isinstance(v, Flow) and v.needs_grad for v in inputs)
        for t, shape, out in zip(node.outputs, ctx.out_shapes, outs, strict=False):
            if isinstance(out, Flow):
                self.values[t.name] = self._forward_output(t, shape, out, rule, needs)
            elif isinstance(out, Const):
                self.values[t.name] = out
        self.steps.append(_Step(node, rule, ctx, inputs, attrs))

    def _forward_output(
        self, t: gs.Tensor, shape: tuple[int, ...], out: Flow, rule: FlowRule, needs: bool
    ) -> Flow:
        """A rule's output flow as stored: per-channel units only where axis 1 is still the
        channels, renormalized if the rule multiplies magnitudes."""
        if out.per_channel and (len(out.unit_shape) != len(shape) or out.unit_shape[1] != shape[1]):
            out = self.g.resolve(out)
        if rule.rescales:
            out = self.g.rescale(out, shape if t.shape is not None else None)
        return replace(out, shape=shape, needs_grad=needs)

    def seed_outputs(self) -> list[tuple[str, str]]:
        """(float64 sum, unit) of each float output that some weight reaches, each seeded
        with ones for the walk back; other outputs are ignored."""
        g = self.g
        totals: list[tuple[str, str]] = []
        for t in self.graph.outputs:
            v = self.values.get(t.name)
            if isinstance(v, Flow):
                v = g.resolve(v)
            dtype = t.dtype if t.dtype is not None else np.float32
            if isinstance(v, Flow) and v.needs_grad and is_float_dtype(dtype):
                self.grads[t.name].append(Flow(g.ones(v.shape), g.zero_scale, v.shape))
                as_f64 = g.node("Cast", [v.tensor], to=TensorProto.DOUBLE)
                totals.append((g.node("ReduceSum", [as_f64], keepdims=0), v.scale))
        if not totals:
            raise OnnxflowError("no float output of the model is reached by a prunable weight")
        return totals

    # ---- backward --------------------------------------------------------------------------
    def backward(self) -> None:
        for step in reversed(self.steps):
            self._backward_step(step)

    def _backward_step(self, step: _Step) -> None:
        """Run the step's rule backward from the flows gathered at its outputs, adding the
        results to its flow inputs' gathered flows."""
        g = self.g
        grads = self.grads
        out_grads = [g.add(grads[t.name]) if grads.get(t.name) else None for t in step.node.outputs]
        if all(x is None for x in out_grads):
            return
        if not any(isinstance(v, Flow) and v.needs_grad for v in step.inputs):
            return
        results = step.rule.backward(g, step.ctx, out_grads, *step.inputs, **step.attrs)
        for t, v, r in zip(step.node.inputs, step.inputs, results, strict=False):
            if r is None or not (isinstance(v, Flow) and v.needs_grad):
                continue
            # Flow reaching a weight is only multiplied by |W| and read out: no renormalizing.
            rescale = step.rule.rescales and t.name not in self.weights
            known = _shape(t) if t.shape is not None else None
            if t.name not in self.weights:
                r = g.resolve(r)  # backward flow is kept in one unit
            grads[t.name].append(g.rescale(r, known) if rescale else r)

    def layer_scores(self) -> tuple[dict[str, tuple[str, str | None]], dict[str, tuple[int, ...]]]:
        """Each reached layer's score |W| * (flow reaching it) as a model output with its
        unit, and the shapes of the per-channel units."""
        g = self.g
        scores: dict[str, tuple[str, str | None]] = {}
        unit_shapes: dict[str, tuple[int, ...]] = {}
        for layer in self.dag.layers:
            if layer.name not in self.grads:
                continue
            parts = self.grads[layer.name]
            if len({p.unit_shape for p in parts}) > 1:
                parts = [g.resolve(p) for p in parts]
            total = g.add(parts)
            if total.per_channel and (
                len(total.unit_shape) != len(layer.shape)
                or np.broadcast_shapes(total.unit_shape, layer.shape) != tuple(layer.shape)
            ):
                total = g.resolve(total)
            score = g.node("Mul", [g.weights[layer.name], total.tensor])
            scores[layer.name] = (score, _unit(g, total.scale))
            if total.per_channel:
                unit_shapes[total.scale] = total.unit_shape
            g.add_output(score, TensorProto.FLOAT)
        return scores, unit_shapes

    def flowing(self) -> frozenset[str]:
        return frozenset(name for name, v in self.values.items() if isinstance(v, Flow))


def _declare_outputs(
    g: FlowBuilder, scores: dict[str, tuple[str, str | None]], totals: list[tuple[str, str]]
) -> list[tuple[str, str | None]]:
    """Declare the output sums and every non-zero unit as float64 outputs (scores are
    declared by `layer_scores`); returns the output flows as `FlowModel.output_flows`."""
    output_flows = [(total, _unit(g, scale)) for total, scale in totals]
    for total, _ in output_flows:
        g.add_output(total, TensorProto.DOUBLE)
    for name in dict.fromkeys(s for _, s in [*scores.values(), *output_flows] if s is not None):
        g.add_output(name, TensorProto.DOUBLE)
    return output_flows


def _onnx_model(g: FlowBuilder, graph: gs.Graph) -> onnx.ModelProto:
    """The built nodes as a model, with the analysis graph's custom-domain opsets."""
    opsets = [helper.make_opsetid("", g.opset)] + [
        helper.make_opsetid(d.domain, d.version)
        for d in graph.import_domains or []
        if d.domain not in ("", "ai.onnx")
    ]
    model = helper.make_model(
        helper.make_graph(g.nodes, "synflow", g.inputs, g.outputs, g.initializers),
        opset_imports=opsets,
        producer_name="onnxflow",
    )
    model.ir_version = helper.find_min_ir_version_for(opsets, True)
    return model


def _shape(t: gs.Tensor) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape) if t.shape is not None else ()


def _as_list(out: Any) -> list[Any]:
    if out is None or isinstance(out, Flow | Const):
        return [out]
    return list(out)


def _layer_inputs(g: FlowBuilder, node: gs.Node, inputs: list[Any], ctx: NodeContext) -> list:
    """A weight layer's inputs as its rule takes them: a data operand that is not a flow
    (a constant table, a value computed from constants or from integer inputs) is where
    flow enters, as ones (flow/sources.py); a Gather is a lookup (one-hot ids times the
    table, ctx.saved["lookup"])."""
    if node.op == "Gather":
        ctx.saved["lookup"] = True
        return inputs
    data = {"Conv": (0,), "ConvTranspose": (0,)}.get(node.op, (0, 1))
    return [
        data_source(g, v)
        if i in data and isinstance(v, Const) and is_float_dtype(node.inputs[i].dtype)
        else v
        for i, v in enumerate(inputs)
    ]


def _copy_verbatim(
    g: FlowBuilder, node: gs.Node, inputs: list[Any], values: dict, derived: set[str] | None
) -> None:
    """A node no flow reaches runs as it is. If it computes from the inputs (`derived`
    given), its results are data (ids, masks), except an embedding lookup `Gather(E, ids)`:
    there flow enters, as one-hot(ids) @ |E| on an all-ones input (flow/sources.py)."""
    if derived is not None and is_lookup(node, derived):
        (t,) = node.outputs
        table = g.const_input(inputs[0], absolute=True)
        if inputs[0].values is None:  # a table the flow model computes
            table = g.node("Cast", [g.node("Abs", [table])], to=TensorProto.FLOAT)
        idx_rank = len(_shape(node.inputs[1]))
        axis = int(node.attrs.get("axis", 0))
        shape = _shape(t)
        flow = lookup_forward(g, table, inputs[0].shape, idx_rank, axis, shape)
        values[t.name] = replace(g.rescale(Flow(flow, g.zero_scale), shape), shape=shape)
        return
    names = ["" if v is None else g.const_input(v) for v in inputs]
    outs = [g.fresh(node.op) for _ in node.outputs]
    g.nodes.append(
        helper.make_node(
            node.op, names, outs, domain=node.domain or None, **_plain_attrs(node.attrs)
        )
    )
    for t, name in zip(node.outputs, outs, strict=True):
        values[t.name] = Const(name, _shape(t))
        if derived is not None:
            derived.add(t.name)


def _plain_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, gs.Constant):
            v = onnx.numpy_helper.from_array(np.asarray(v.values), v.name)
        out[k] = v
    return out


def _unit(g: FlowBuilder, scale: str) -> str | None:
    """The log-unit as a model output, or None where it is the constant 0."""
    return None if scale == g.zero_scale else scale
