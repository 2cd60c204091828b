"""Zero-initialized parameters: found once, then read as ones by the flow model.

Libraries set some parameters to zero at initialization as a training trick: torchvision's
ViT heads and timm's MLP-Mixer heads are all-zero weight tensors; `zero_init_residual`
ResNets, RegNetY and many timm models set the last normalization scale of each residual
branch to 0; LeViT and CaiT-style layer scales start at 0. The paper's R then degenerates
(an all-zero head makes R = 0; a zero scale gives every weight of its branch the score 0),
although training moves these values off zero at its first step. With
`PruneOptions.zero_init="ones"` the flow model reads such tensors as ones, so flow crosses
them as through a layer that passes every channel; `"strict"` keeps the weights as they
stand (docs/flow_rules.md, "Zero-initialized parameters").
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxflow.dag import computed_operand, is_float_constant, prunable_operand
from onnxflow.external import constant_array

# Normalizations whose input 1 is the per-channel scale gamma.
NORM_SCALE_OPS = frozenset(
    {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization"}
)


@dataclass(frozen=True)
class ZeroInit:
    """The zero-initialized tensors of a model, by name, in graph order."""

    weights: tuple[str, ...] = ()
    """All-zero weight operands of Conv, ConvTranspose, Gemm and MatMul: not prunable (not
    in N, not in the masks; they stay zero in the output); flow crosses them as ones. Stored
    weights, and weights the graph computes (NFNet's standardized convolutions, whose gain
    starts at 0 on each residual branch's last layer: the effective weight is all zero)."""
    scales: tuple[str, ...] = ()
    """All-zero normalization scales (gamma) and layer scales (a Mul's constant operand),
    read as ones."""

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.weights) | frozenset(self.scales)

    def __len__(self) -> int:
        return len(self.weights) + len(self.scales)

    def summary(self, shown: int = 3) -> str:
        """One line: how many tensors of each kind, and the first few names."""
        kinds = []
        if self.weights:
            kinds.append(_count(len(self.weights), "weight") + ", not prunable")
        if self.scales:
            kinds.append(_count(len(self.scales), "scale"))
        names = [*self.weights, *self.scales]
        more = f", ... (+{len(names) - shown})" if len(names) > shown else ""
        return (
            f"{_count(len(self), 'zero-initialized tensor')} read as ones "
            f"({'; '.join(kinds)}): {', '.join(names[:shown])}{more}"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def all_zero(t: gs.Tensor | None) -> bool:
    """A non-empty float constant whose every entry is 0 (-0.0 included)."""
    if not is_float_constant(t):
        return False
    assert isinstance(t, gs.Constant)
    values = constant_array(t)  # a large external weight is read, not kept in the graph
    return values.size > 0 and not np.any(values)


def ones_if_zero_init(t: gs.Constant, read_as_ones: Container[str]) -> gs.Constant:
    """`t`, or ones of its shape and dtype where it is a zero-initialized tensor to read
    as ones (the flow model's substitution; the model itself is never changed)."""
    if t.name not in read_as_ones:
        return t
    return gs.Constant(t.name, np.ones(t.shape, np.dtype(t.dtype)))


def _zero_scale(node: gs.Node) -> gs.Constant | None:
    """The all-zero scale operand of `node` applied to data, or None.

    Normalizations: gamma (input 1) of a node whose input 0 is computed (a Variable). A layer
    scale: a Mul of a computed tensor by an all-zero constant that does not broadcast it to
    a larger shape, with at most one axis longer than 1 (per-channel or scalar). A Mul that
    enlarges its input is not a scale, nor is a zero tensor spanning several axes: that is
    a state or a buffer (a recurrence's initial state, `torch.zeros(...)` in the forward
    pass: Mamba's scan starts from one), not a parameter that training moves off zero.
    """
    if (node.domain or "") not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    if node.op in NORM_SCALE_OPS:
        x, gamma = node.inputs[0], node.inputs[1]
        if isinstance(x, gs.Variable) and all_zero(gamma):
            assert isinstance(gamma, gs.Constant)
            return gamma
        return None
    if node.op != "Mul" or len(node.inputs) != 2:
        return None
    for x, c in (node.inputs, node.inputs[::-1]):
        if isinstance(x, gs.Variable) and all_zero(c):
            assert isinstance(c, gs.Constant)
            if sum(int(d) > 1 for d in c.shape) > 1:
                return None
            y = node.outputs[0]
            if x.shape is None or y.shape is None or list(x.shape) == list(y.shape):
                return c
    return None


def find_zero_init(graph: gs.Graph, stored: Container[str]) -> ZeroInit:
    """The zero-initialized weights (stored prunable operands, seen through Transpose,
    Reshape and the like) and scales of a normalized graph."""
    weights: dict[str, None] = {}
    scales: dict[str, None] = {}
    for node in graph.nodes:
        found = prunable_operand(node, stored)
        if found is not None:
            if all_zero(found[1]):
                weights[found[1].name] = None
            continue
        computed = computed_operand(node, stored)
        if computed is not None:
            if all_zero(computed):
                weights[computed.name] = None
            continue
        scale = _zero_scale(node)
        if scale is not None:
            scales[scale.name] = None
    return ZeroInit(tuple(weights), tuple(s for s in scales if s not in weights))
