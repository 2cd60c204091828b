"""Einsum of flows: a product, linear in each operand.

Forward is the Einsum as it is on the flows (units added, renormalized like MatMul). The
transpose for operand `i` is another Einsum: the other operands and the output's flow in,
operand `i`'s subscripts out. Subscripts that only operand `i` has (summed inside it) are
broadcast back; broadcast size-1 dimensions are summed. The equation is first made explicit:
`...` becomes letters (shapes are static) and an implicit output is spelled out.

A constant operand is a fixed factor: it enters as its |value|, like a constant operand of
Mul or a computed one of MatMul, and is not pruned, since onnxflow prunes the weights of
Conv, ConvTranspose, Gemm and MatMul only (docs/flow_rules.md). Such constants are relative-
position tables (MViTv2's, gathered by constant indices: the dynamo exporter stores the
gathered table) or the kernel of a layer written as an Einsum (Keras' EinsumDense), which
stays dense; normalization names these nodes in one note (export such a layer as MatMul or
Gemm to prune it). Repeated subscripts within one operand (diagonals) are refused.
"""

from __future__ import annotations

import string
from collections import Counter

from onnxflow.errors import OnnxflowError
from onnxflow.flow.builder import Flow, Shape
from onnxflow.flow.registry import FlowRule, flow_rule
from onnxflow.flow.rules.linear import const_operand


def explicit_equation(name: str, equation: str, shapes: list[Shape]) -> tuple[list[str], str]:
    """Operand subscripts and output subscripts, with `...` spelled out and every letter of
    one size (a broadcast size-1 dimension gets a letter of its own)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise OnnxflowError(f"node {name!r}: Einsum {equation!r} has {len(shapes)} operands")
    fresh = iter(c for c in string.ascii_letters if c not in eq)
    ranks = [len(s) - (len(t) - 3) if "..." in t else 0 for t, s in zip(terms, shapes, strict=True)]
    ellipsis = [next(fresh) for _ in range(max(ranks, default=0))]
    if not arrow:
        counts = Counter(c for t in terms for c in t.replace("...", ""))
        rhs = "..." * bool(ellipsis) + "".join(sorted(c for c, n in counts.items() if n == 1))
    expanded = [
        t.replace("...", "".join(ellipsis[len(ellipsis) - r :]))
        for t, r in zip(terms, ranks, strict=True)
    ]
    out = rhs.replace("...", "".join(ellipsis))
    sizes: dict[str, int] = {}
    for t, s in zip(expanded, shapes, strict=True):
        if len(t) != len(s) or len(set(t)) != len(t):
            raise OnnxflowError(
                f"node {name!r}: Einsum {equation!r}: subscripts {t!r} do not fit shape "
                f"{list(s)} or repeat a letter (diagonals are not supported)"
            )
        for c, d in zip(t, s, strict=True):
            sizes[c] = max(sizes.get(c, 1), int(d))
    final = [
        "".join(c if d == sizes[c] else next(fresh) for c, d in zip(t, s, strict=True))
        for t, s in zip(expanded, shapes, strict=True)
    ]
    return final, out


@flow_rule("Einsum")
class Einsum(FlowRule):
    rescales = True

    @staticmethod
    def _operands(g, node, inputs) -> list[Flow]:
        """The operands as flows: a constant as its |value| in unit 1, with no backward
        flow (a fixed factor)."""
        return [
            v if isinstance(v, Flow) else Flow(const_operand(g, node, v), g.zero_scale, v.shape)
            for v in inputs
        ]

    def _terms(self, node, inputs, equation: str) -> tuple[list[str], str]:
        return node.once(
            "terms",
            lambda: explicit_equation(node.name, equation, [tuple(v.shape) for v in inputs]),
        )

    def forward(self, g, node, *inputs, equation):
        inputs = node.once("operands", lambda: self._operands(g, node, inputs))
        terms, out = self._terms(node, inputs, equation)
        y = g.node("Einsum", [v.tensor for v in inputs], equation=",".join(terms) + "->" + out)
        return Flow(y, g.scale_sum(*(v.scale for v in inputs)))

    def backward(self, g, node, grads, *inputs, equation):
        (gy,) = grads
        inputs = node.once("operands", lambda: self._operands(g, node, inputs))
        terms, out = self._terms(node, inputs, equation)
        res: list[Flow | None] = []
        for i, v in enumerate(inputs):
            if not v.needs_grad:
                res.append(None)
                continue
            others = [j for j in range(len(inputs)) if j != i]
            seen = {c for j in others for c in terms[j]} | set(out)
            keep = "".join(c for c in terms[i] if c in seen)
            eq = ",".join([*(terms[j] for j in others), out]) + "->" + keep
            t = g.node("Einsum", [*(inputs[j].tensor for j in others), gy.tensor], equation=eq)
            if keep != terms[i]:  # letters summed inside operand i: broadcast back
                kept = [d if c in seen else 1 for c, d in zip(terms[i], v.shape, strict=True)]
                t = g.expand_to(g.reshape(t, kept), tuple(kept), tuple(v.shape))
            res.append(Flow(t, g.scale_sum(gy.scale, *(inputs[j].scale for j in others))))
        return res
