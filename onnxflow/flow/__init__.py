"""The flow engine: SynFlow scores computed by onnxruntime on the positive linearization.

- `registry`: per-op flow rules (forward flow and its transpose) in a `RuleRegistry`; the
  default one is filled by `@flow_rule`.
- `reach`: which tensors carry flow and which ops on the flow path lack a rule (the
  builder and `inspect` both ask it).
- `builder`: the scaled-flow graph primitives the rules are written with.
- `model`: walks the analysis graph and emits one ONNX "flow model" that computes every
  prunable weight's score in a single run.
- `engine`: runs the flow model on masked weights and returns natural-log scores.
"""

from onnxflow.flow import rules as _rules  # noqa: F401  (registers the built-in rules)
from onnxflow.flow.builder import Const, Flow, FlowBuilder, NodeContext
from onnxflow.flow.registry import (
    FlowRule,
    RuleRegistry,
    default_rules,
    flow_rule,
    get_flow_rule,
    register_flow_rule,
)

__all__ = [
    "Const",
    "Flow",
    "FlowBuilder",
    "FlowRule",
    "NodeContext",
    "RuleRegistry",
    "default_rules",
    "flow_rule",
    "get_flow_rule",
    "register_flow_rule",
]
