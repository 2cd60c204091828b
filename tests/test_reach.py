"""One flow-reachability walk (onnxflow/flow/reach.py): the ops `inspect` names are exactly
the ops `prune` refuses, and the builder's flow goes where the walk says.

Hand-built cases on 3-5 node graphs beside every committed export in tests/exported/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxflow
from onnxflow.analyze import analyze
from onnxflow.flow.model import build_flow_model
from onnxflow.flow.reach import flow_reach
from onnxflow.flow.registry import default_rules
from onnxflow.flow.rules.elementwise import PassThrough
from onnxflow.inspect import inspect_model
from onnxflow.stages import Analysis

EXPORTED = sorted((Path(__file__).parent / "exported").glob("*.onnx"))
RNG = np.random.default_rng(0)


def _init(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto],
    domains: tuple[str, ...] = (),
    out_shape: tuple[int, ...] = (1, 5),
) -> onnx.ModelProto:
    # Custom ops' outputs need their shape: the analysis cannot infer it.
    shaped = [helper.make_tensor_value_info("f", TensorProto.FLOAT, [1, 8])] if domains else []
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        inits,
        value_info=shaped,
    )
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


IDS = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])
X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])


def round_after_embedding() -> onnx.ModelProto:
    """The issue's case: int64 ids -> Gather(E) -> Round -> MatMul(W). E is a constant
    table (not prunable); flow enters at the lookup and meets Round."""
    return _model(
        [
            helper.make_node("Gather", ["E", "ids"], ["e"], name="embed"),
            helper.make_node("Round", ["e"], ["r"], name="round"),
            helper.make_node("MatMul", ["r", "W"], ["y"], name="proj"),
        ],
        [IDS],
        [_init("E", 10, 8), _init("W", 8, 5)],
        out_shape=(1, 4, 5),
    )


def floor_after_embedding_layer() -> onnx.ModelProto:
    """Embedding, a weight layer, then a rule-less op before the last layer."""
    return _model(
        [
            helper.make_node("Gather", ["E", "ids"], ["e"], name="embed"),
            helper.make_node("MatMul", ["e", "W1"], ["h"], name="fc1"),
            helper.make_node("Floor", ["h"], ["f"], name="floor"),
            helper.make_node("MatMul", ["f", "W2"], ["y"], name="fc2"),
        ],
        [IDS],
        [_init("E", 10, 8), _init("W1", 8, 8), _init("W2", 8, 5)],
        out_shape=(1, 4, 5),
    )


def round_off_the_path() -> onnx.ModelProto:
    """Round on data computed from the ids (a position bias), added to the flow: it runs as
    it is; no flow crosses it."""
    return _model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"),
            helper.make_node("Cast", ["ids"], ["c"], name="cast", to=TensorProto.FLOAT),
            helper.make_node("Round", ["c"], ["r"], name="round"),
            helper.make_node("ReduceSum", ["r"], ["s"], name="sum", keepdims=1),
            helper.make_node("Add", ["h", "s"], ["y"], name="add"),
        ],
        [X, IDS],
        [_init("W", 8, 5)],
    )


def round_after_hardmax() -> onnx.ModelProto:
    """Hardmax ends the flow (its one-hot output is data about the flow, though float): a
    Round on it is off the path."""
    return _model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"),
            helper.make_node("Hardmax", ["h"], ["m"], name="hardmax"),
            helper.make_node("Round", ["m"], ["r"], name="round"),
            helper.make_node("Add", ["h", "r"], ["y"], name="add"),
        ],
        [X],
        [_init("W", 8, 5)],
    )


def custom_op_on_the_path() -> onnx.ModelProto:
    """A rule-less op of a custom domain between two weight layers."""
    return _model(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
            helper.make_node("Fancy", ["h"], ["f"], name="fancy", domain="com.example"),
            helper.make_node("MatMul", ["f", "W2"], ["y"], name="fc2"),
        ],
        [X],
        [_init("W1", 8, 8), _init("W2", 8, 5)],
        domains=("com.example",),
    )


def two_rule_less_ops() -> onnx.ModelProto:
    """Two rule-less ops in a row: inspect names both, prune refuses at the first."""
    return _model(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
            helper.make_node("Round", ["h"], ["r"], name="round"),
            helper.make_node("Ceil", ["r"], ["c"], name="ceil"),
            helper.make_node("MatMul", ["c", "W2"], ["y"], name="fc2"),
        ],
        [X],
        [_init("W1", 8, 8), _init("W2", 8, 5)],
    )


HAND_BUILT = {
    "round_after_embedding": (round_after_embedding, {"round"}),
    "floor_after_embedding_layer": (floor_after_embedding_layer, {"floor"}),
    "round_off_the_path": (round_off_the_path, set()),
    "round_after_hardmax": (round_after_hardmax, set()),
    "custom_op_on_the_path": (custom_op_on_the_path, {"fancy"}),
    "two_rule_less_ops": (two_rule_less_ops, {"round", "ceil"}),
}


def _refused(model: onnx.ModelProto | Path) -> str | None:
    """The node prune refuses for want of a rule, or None if it prunes."""
    try:
        onnxflow.prune(model, sparsity=0.5, iterations=1, keep_scores=False)
    except onnxflow.UnsupportedOpError as e:
        return e.node_name
    return None


def _assert_inspect_equals_prune(model: onnx.ModelProto | Path) -> list[str]:
    named = [m.node for m in inspect_model(model).missing_rules]
    refused = _refused(model)
    if named:
        assert refused is not None, f"inspect names {named}, prune refuses nothing"
        assert refused == named[0], "prune refuses the first op on the path without a rule"
    else:
        assert refused is None, f"prune refuses {refused!r}, inspect names nothing"
    return named


@pytest.mark.parametrize("case", sorted(HAND_BUILT))
def test_inspect_names_what_prune_refuses_hand_built(case: str) -> None:
    make, expected = HAND_BUILT[case]
    named = _assert_inspect_equals_prune(make())
    assert set(named) == expected


@pytest.mark.parametrize("path", EXPORTED, ids=[p.stem for p in EXPORTED])
def test_inspect_names_what_prune_refuses_exported(path: Path) -> None:
    _assert_inspect_equals_prune(path)


def _analysis(model: onnx.ModelProto | Path) -> Analysis:
    return analyze(model)


@pytest.mark.parametrize("path", EXPORTED, ids=[p.stem for p in EXPORTED])
def test_builder_flow_goes_where_reach_says(path: Path) -> None:
    """Every tensor the builder gives a flow is one flow_reach predicts, and every predicted
    tensor that some node produces got one (a rule's `flow_outputs` is kept honest)."""
    state = _analysis(path)
    reach = flow_reach(state.graph, [layer.name for layer in state.dag.layers])
    built = build_flow_model(state.graph, state.dag).flowing
    produced = {t.name for n in state.graph.nodes for t in n.outputs}
    produced |= {t.name for t in state.graph.inputs} | {x.name for x in state.dag.layers}
    assert built == reach.flowing & produced
    assert not reach.missing


def test_reach_on_the_issue_case_walks_past_the_lookup() -> None:
    state = _analysis(round_after_embedding())
    names = [layer.name for layer in state.dag.layers]
    assert names == ["W"]  # the table is a constant: flow enters at the lookup
    reach = flow_reach(state.graph, names)
    # The lookup is where flow starts (a source, not a node with a flowing input).
    assert [n.name for n in reach.path] == ["round", "proj"]
    assert [n.name for n in reach.missing] == ["round"]
    assert "e" in reach.flowing and "r" in reach.flowing


def test_a_rule_in_an_own_registry_lets_both_through() -> None:
    """With a rule for Round in a registry of its own, inspect names nothing and prune
    prunes; the default registry is not touched."""
    rules = default_rules().copy()
    rules.register("Round", PassThrough)
    model = round_after_embedding()
    assert inspect_model(model, rules=rules).missing_rules == []
    result = onnxflow.prune(model, sparsity=0.5, iterations=2, rules=rules)
    assert int(result.masks["W"].sum()) == 20
    assert default_rules().get("Round") is None
    assert [m.node for m in inspect_model(model).missing_rules] == ["round"]
    with pytest.raises(onnxflow.UnsupportedOpError, match="'Round'"):
        onnxflow.score(model)
    assert np.isfinite(onnxflow.score(model, rules=rules).log_flow)
