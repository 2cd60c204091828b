"""Registry of flow rules, keyed by `(domain, op_type)` with an opset range.

A flow rule says how synaptic flow crosses one op of the *positive linearization* of the
graph (../docs/flow_rules.md): `forward` pushes the all-ones flow from inputs to outputs,
`backward` pulls flow from outputs back to inputs (the transposed op). For a node that uses a
prunable weight, `backward` also returns the flow arriving at the weight, `dR/d|W|`.

Adding an op is adding one small class:

    @flow_rule("Relu")
    class Relu(FlowRule):
        def forward(self, g, node, x):
            return x
        def backward(self, g, node, grads, x):
            return [grads[0]]

Handlers get the node's inputs positionally (a `Flow`, a `Const`, or None for an absent
optional input; prunable weights arrive as flows of unit 1) and its attributes as keyword
arguments with the ONNX defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from onnxflow.flow.builder import Flow, FlowBuilder, NodeContext


class FlowRule:
    """Forward and transposed flow of one op. Subclass and register with `@flow_rule`."""

    rescales: ClassVar[bool] = False
    """True for ops that multiply magnitudes (weight layers, products): their outputs are
    renormalized so flows stay inside float32 range whatever the depth."""

    flow_outputs: ClassVar[int | None] = None
    """How many leading outputs can carry flow (None: every float output; 0: none, the
    results are data about the flow). `flow/reach.py` reads it to know, without building
    anything, where flow goes: keep it in step with what `forward` returns."""

    channel_units: ClassVar[bool] = False
    """True for rules that accept flows with one log-unit per channel (`Flow.unit_shape`):
    they keep channels apart or resolve the units themselves. Other rules receive such flows
    resolved to a single unit (`FlowBuilder.resolve`)."""

    def forward(self, g: FlowBuilder, node: NodeContext, *inputs: Any, **attrs: Any) -> Any:
        """Flow at the outputs, given flow (or constants) at the inputs."""
        raise NotImplementedError

    def backward(
        self,
        g: FlowBuilder,
        node: NodeContext,
        grads: Sequence[Flow | None],
        *inputs: Any,
        **attrs: Any,
    ) -> Sequence[Flow | None]:
        """Flow at each input (dR/d input), given flow at each output (None: no flow there).

        Only flow inputs whose `needs_grad` is true need an answer (prunable weights always
        do: that answer is dR/d|W|); return None for the rest.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class _Entry:
    rule: FlowRule
    since: int
    until: int | None


R = TypeVar("R", bound=type[FlowRule])


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


class RuleRegistry:
    """Flow rules by `(domain, op_type)`, each valid for a range of opsets.

    One object rather than a module global, so a caller that needs a rule of its own (a
    test, a library that must not change what other callers of onnxflow see) registers it on
    a copy of the default registry and passes that copy to prune/score/inspect (`rules=`).
    """

    def __init__(self) -> None:
        self._rules: dict[tuple[str, str], list[_Entry]] = {}

    def register(
        self,
        op_type: str,
        rule: FlowRule | type[FlowRule],
        *,
        domain: str = "",
        since: int = 1,
        until: int | None = None,
    ) -> None:
        """Register a rule for `op_type` in `domain`, valid for opsets `since..until`. A
        later registration for an overlapping opset range takes precedence."""
        instance = rule() if isinstance(rule, type) else rule
        if not isinstance(instance, FlowRule):
            raise TypeError(f"a flow rule must subclass onnxflow.FlowRule, got {type(instance)}")
        entries = self._rules.setdefault((_domain(domain), op_type), [])
        entries.insert(0, _Entry(instance, since, until))

    def get(self, op_type: str, domain: str = "", opset: int | None = None) -> FlowRule | None:
        """The rule for an op at an opset version, or None if there is none."""
        for entry in self._rules.get((_domain(domain), op_type), []):
            if opset is None or (
                entry.since <= opset and (entry.until is None or opset <= entry.until)
            ):
                return entry.rule
        return None

    def ops(self) -> list[tuple[str, str]]:
        """All (domain, op_type) pairs that have a rule."""
        return sorted(self._rules)

    def copy(self) -> RuleRegistry:
        """An independent registry with the same rules: registering on it changes only it."""
        other = RuleRegistry()
        other._rules = {key: list(entries) for key, entries in self._rules.items()}
        return other

    def snapshot(self) -> dict[tuple[str, str], tuple[_Entry, ...]]:
        """The registrations as they stand (for checking that nothing was added)."""
        return {key: tuple(entries) for key, entries in self._rules.items()}


DEFAULT_RULES = RuleRegistry()
"""The built-in rules (registered by importing onnxflow.flow.rules) plus any added with
`register_flow_rule`. Used wherever no registry is passed."""


def default_rules() -> RuleRegistry:
    """The default registry (looked up at call time, so a test may swap it for a copy)."""
    return DEFAULT_RULES


def register_flow_rule(
    op_type: str,
    rule: FlowRule | type[FlowRule],
    *,
    domain: str = "",
    since: int = 1,
    until: int | None = None,
) -> None:
    """Register a flow rule for `op_type` in `domain`, valid for opsets `since..until`, in
    the default registry.

    The public way to teach onnxflow a custom op without editing the package. A later
    registration for an overlapping opset range takes precedence. To keep a rule to one
    call, register it on `default_rules().copy()` and pass that as `rules=`.
    """
    default_rules().register(op_type, rule, domain=domain, since=since, until=until)


def flow_rule(
    *op_types: str, domain: str = "", since: int = 1, until: int | None = None
) -> Callable[[R], R]:
    """Class decorator: register the rule for each of `op_types` in the default registry."""

    def register(cls: R) -> R:
        for op in op_types:
            register_flow_rule(op, cls, domain=domain, since=since, until=until)
        return cls

    return register


def get_flow_rule(op_type: str, domain: str = "", opset: int | None = None) -> FlowRule | None:
    """The default registry's rule for an op at an opset version, or None if there is none."""
    return default_rules().get(op_type, domain, opset)


def registered_ops() -> list[tuple[str, str]]:
    """All (domain, op_type) pairs that have a rule in the default registry."""
    return default_rules().ops()
