"""The one exception type users see.

Every problem with the user's input (file, model, options) is raised as an `OnnxflowError`
whose message is a single line naming the problem; the CLI prints it and exits with 2.

The library speaks its own vocabulary: an error about an option names the option's field and
value as a Python caller wrote them (`pattern=(2, 4)`, `provider='cuda'`), never a command-line
flag. Such an error is built from a template and its parts, the option as an `Opt`, so that the
CLI can write the same sentence with its flag instead (`--pattern 2:4`): the mapping from fields
to flags is one table in cli.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed), at most `limit` characters:
    third-party errors (onnx, onnxruntime, protobuf) often span many lines."""
    return " ".join(str(e).split())[:limit] or type(e).__name__


def some_names(names: Sequence[str], shown: int = 3) -> str:
    """The first `shown` names quoted, then how many more: one-line notes name a few."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(n) for n in names[:shown]) + more


_NO_VALUE = object()


@dataclass(frozen=True)
class Opt:
    """An option named in an error: its field (a `PruneOptions` field or an output such as
    `masks`) and, where the error is about a value, that value.

    In the library's words it reads `field=value!r`, or the field alone."""

    field: str
    value: object = _NO_VALUE

    @property
    def has_value(self) -> bool:
        return self.value is not _NO_VALUE

    def __str__(self) -> str:
        return f"{self.field}={self.value!r}" if self.has_value else self.field


class OnnxflowError(Exception):
    """A problem with the input model or the options, reported as one line.

    `OnnxflowError(message)` is a finished message. `OnnxflowError(template, **parts)` fills a
    `str.format` template with its parts, the options among them as `Opt`s: the message then
    names them by field, and `render` can name them otherwise (the CLI: by flag). User text
    goes in as a part, never into the template, so braces in it are harmless.
    """

    def __init__(self, message: str, /, **parts: object) -> None:
        self.template = message
        self.parts = parts
        super().__init__(message.format(**parts) if parts else message)

    @property
    def options(self) -> list[Opt]:
        """The options the message names, in the order of its parts."""
        return [p for p in self.parts.values() if isinstance(p, Opt)]

    @property
    def field(self) -> str | None:
        """The field of the (first) option the error is about; None for other errors."""
        found = self.options
        return found[0].field if found else None

    def render(self, name: Callable[[Opt], str]) -> str:
        """The message with every option written by `name` (e.g. as a command-line flag)."""
        if not self.parts:
            return str(self)
        return self.template.format(
            **{k: name(v) if isinstance(v, Opt) else v for k, v in self.parts.items()}
        )


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
