"""One presentation model for layer rows: what the prune summary, the inspect table, the JSON
(`--report`, `inspect --json`) and the plot show about each prunable weight.

A `LayerRow` is built from a `WeightLayer` of the DAG and a count of the weights it keeps
(after pruning: the mask's ones; when inspecting: the current nonzeros); density and FLOPs are
derived here and nowhere else, and `Totals` sums the rows once for every output.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from onnxflow.dag import WeightLayer


@dataclass(frozen=True)
class LayerRow:
    name: str
    """Initializer name of the weight (the key in masks and scores)."""
    nodes: list[str]
    op: str
    shape: list[int]
    params: int
    kept: int
    """Weights kept by the pruning, or (inspect) nonzero in the model as it stands."""
    uses: int = 0
    """Multiply-accumulates per weight per forward pass."""
    fed_by: list[str] = field(default_factory=list)
    """The weight layers whose outputs reach this one directly (`WeightLayer.feeds_from`)."""

    @classmethod
    def of(cls, layer: WeightLayer, kept: int) -> LayerRow:
        return cls(
            name=layer.name,
            nodes=list(layer.nodes),
            op=layer.op,
            shape=list(layer.shape),
            params=layer.size,
            kept=kept,
            uses=layer.uses,
            fed_by=list(layer.feeds_from),
        )

    @property
    def density(self) -> float:
        return self.kept / self.params if self.params else 0.0

    @property
    def flops(self) -> int:
        """Dense FLOPs of the layer (2 per multiply-accumulate)."""
        return 2 * self.params * self.uses

    @property
    def flops_kept(self) -> int:
        """FLOPs left when zero weights are skipped."""
        return 2 * self.kept * self.uses

    def report_dict(self, *, figures: bool = True) -> dict[str, Any]:
        """The row in `--report` (docs/report.md): `figures=False` for excluded layers,
        which list no density or FLOPs."""
        out: dict[str, Any] = {
            "name": self.name,
            "nodes": self.nodes,
            "op": self.op,
            "shape": self.shape,
            "params": self.params,
            "kept": self.kept,
            "uses": self.uses,
        }
        if figures:
            out |= {"density": self.density, "flops": self.flops, "flops_kept": self.flops_kept}
        return out

    def inspect_dict(self) -> dict[str, Any]:
        """The row in `onnxflow inspect --json` (the count is called `nonzero` there)."""
        return {
            "name": self.name,
            "op": self.op,
            "nodes": self.nodes,
            "shape": self.shape,
            "params": self.params,
            "nonzero": self.kept,
            "density": self.density,
            "flops": self.flops,
            "flops_kept": self.flops_kept,
            "feeds_from": self.fed_by,
        }


def layer_rows(layers: Iterable[WeightLayer], kept: Mapping[str, int]) -> list[LayerRow]:
    """One row per layer, in network order, with `kept[layer.name]` weights kept."""
    return [LayerRow.of(layer, kept[layer.name]) for layer in layers]


@dataclass(frozen=True)
class Totals:
    """Sums over the rows of a table (excluded layers are never among them)."""

    params: int
    kept: int
    flops: int
    flops_kept: int

    @classmethod
    def of(cls, rows: Sequence[LayerRow]) -> Totals:
        return cls(
            params=sum(r.params for r in rows),
            kept=sum(r.kept for r in rows),
            flops=sum(r.flops for r in rows),
            flops_kept=sum(r.flops_kept for r in rows),
        )

    @property
    def density(self) -> float:
        return self.kept / self.params if self.params else 0.0

    @property
    def compression(self) -> float:
        """log10(params / kept): the paper's compression C; inf if nothing is kept."""
        return math.log10(self.params / self.kept) if self.kept else math.inf
