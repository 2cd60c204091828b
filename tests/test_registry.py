"""RuleRegistry: lookup by (domain, op_type, opset), copies that do not share registrations,
and `register_flow_rule` as the default registry's public door."""

from __future__ import annotations

import pytest

import onnxflow
from onnxflow.flow import registry
from onnxflow.flow.registry import FlowRule, RuleRegistry, default_rules
from onnxflow.flow.rules.elementwise import PassThrough
from onnxflow.flow.rules.indexing import EndsFlow


class Old(FlowRule):
    pass


class New(FlowRule):
    pass


def test_lookup_by_domain_op_and_opset_range() -> None:
    rules = RuleRegistry()
    rules.register("Op", Old, since=1, until=12)
    rules.register("Op", New, since=13)
    assert isinstance(rules.get("Op", "", 11), Old)
    assert isinstance(rules.get("Op", "", 12), Old)  # `until` is inclusive
    assert isinstance(rules.get("Op", "", 13), New)
    assert isinstance(rules.get("Op", "ai.onnx", 21), New)  # ai.onnx is the default domain
    assert isinstance(rules.get("Op"), New)  # no opset: the latest registration
    assert rules.get("Op", "com.example", 13) is None
    assert rules.get("Other") is None
    assert rules.ops() == [("", "Op")]


def test_a_later_registration_for_an_overlapping_range_wins() -> None:
    rules = RuleRegistry()
    rules.register("Op", Old)
    rules.register("Op", New, since=5, until=9)
    assert isinstance(rules.get("Op", "", 4), Old)
    assert isinstance(rules.get("Op", "", 7), New)
    assert isinstance(rules.get("Op", "", 10), Old)


def test_an_instance_is_kept_and_a_non_rule_refused() -> None:
    rules = RuleRegistry()
    rule = New()
    rules.register("Op", rule, domain="com.example")
    assert rules.get("Op", "com.example") is rule
    with pytest.raises(TypeError, match="FlowRule"):
        rules.register("Op", object)  # type: ignore[arg-type]


def test_a_copy_shares_no_registrations() -> None:
    original = RuleRegistry()
    original.register("Op", Old)
    copy = original.copy()
    copy.register("Op", New)
    copy.register("Mine", New, domain="com.example")
    assert isinstance(original.get("Op"), Old)
    assert original.get("Mine", "com.example") is None
    assert isinstance(copy.get("Op"), New)
    original.register("Late", Old)
    assert copy.get("Late") is None


def test_the_default_registry_holds_the_built_in_rules() -> None:
    rules = default_rules()
    assert isinstance(rules.get("Relu", "", 17), PassThrough)
    assert isinstance(rules.get("Hardmax", "", 17), EndsFlow)
    assert rules.get("Round", "", 17) is None  # refused: docs/flow_rules.md says why
    assert ("", "Conv") in rules.ops()
    assert onnxflow.default_rules() is rules
    assert registry.registered_ops() == rules.ops()


def test_register_flow_rule_registers_into_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    own = default_rules().copy()
    kept = default_rules()
    monkeypatch.setattr(registry, "DEFAULT_RULES", own)
    onnxflow.register_flow_rule("Round", PassThrough, since=11)
    assert isinstance(registry.get_flow_rule("Round", "", 17), PassThrough)
    assert registry.get_flow_rule("Round", "", 10) is None
    assert kept.get("Round") is None


def test_declared_flow_outputs() -> None:
    """`flow_outputs` of the rules whose later outputs are data (flow/reach.py reads it)."""
    rules = default_rules()
    assert rules.get("Dropout").flow_outputs == 1  # type: ignore[union-attr]
    assert rules.get("TopK").flow_outputs == 1  # type: ignore[union-attr]
    assert rules.get("MaxPool").flow_outputs == 1  # type: ignore[union-attr]
    assert rules.get("ArgMax").flow_outputs == 0  # type: ignore[union-attr]
    assert rules.get("MatMul").flow_outputs is None  # type: ignore[union-attr]


def test_every_default_domain_op_has_a_rule_or_a_documented_refusal() -> None:
    from pathlib import Path

    import onnx.defs

    from onnxflow.flow.registry import registered_ops
    from onnxflow.flow.rules.coverage import REFUSED
    from onnxflow.passes.recurrent import RECURRENT

    ops = {
        s.name
        for s in onnx.defs.get_all_schemas_with_history()
        if s.domain == "" and s.since_version <= 21
    }
    registered = {op for domain, op in registered_ops() if domain == ""}
    missing = sorted(ops - registered - set(REFUSED) - set(RECURRENT))
    assert not missing
    assert not set(REFUSED) & registered
    docs = (Path(__file__).resolve().parent.parent / "docs" / "flow_rules.md").read_text()
    table = docs[docs.index("## Ops without a rule") :]
    for op in REFUSED:
        assert f"`{op}`" in table, op


def test_node_context_once_makes_a_value_on_first_use_only() -> None:
    """`NodeContext.once`, which rules use for what forward and backward share: made once
    per node and key."""
    from onnxflow.flow.builder import NodeContext

    node = NodeContext("n", "Conv", [(1, 2)])
    made: list[int] = []
    assert node.once("k", lambda: made.append(1) or "first") == "first"
    assert node.once("k", lambda: made.append(2) or "second") == "first"
    assert node.once("other", lambda: "third") == "third"
    assert made == [1]
