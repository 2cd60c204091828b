"""The one exception type users see.

Every problem with the user's input (file, model, options) is raised as an `OnnxflowError`
whose message is a single line naming the problem; the CLI prints it and exits with 2.
"""

from __future__ import annotations


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed), at most `limit` characters:
    third-party errors (onnx, onnxruntime, protobuf) often span many lines."""
    return " ".join(str(e).split())[:limit] or type(e).__name__


class OnnxflowError(Exception):
    """A problem with the input model or the options, reported as one line."""


class UnsupportedOpError(OnnxflowError):
    """An op on the flow path has no flow rule."""

    def __init__(self, op_type: str, domain: str, node_name: str) -> None:
        dom = domain or "ai.onnx"
        super().__init__(
            f"op {op_type!r} (domain {dom!r}, node {node_name!r}) has no flow rule; "
            f"add one with onnxflow.register_flow_rule({op_type!r}, rule, domain={domain!r}) "
            "(see docs/flow_rules.md)"
        )
        self.op_type = op_type
        self.domain = domain
        self.node_name = node_name
