"""Inspection without pruning: the weight-layer DAG, current densities, ops lacking a rule."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxflow.analyze import analyze
from onnxflow.dag import WeightDag
from onnxflow.flow.reach import flow_reach
from onnxflow.flow.registry import RuleRegistry
from onnxflow.flow.zero_init import find_zero_init
from onnxflow.rows import LayerRow, Totals, layer_rows
from onnxflow.tensors import stored_tensor_names


@dataclass(frozen=True)
class MissingRule:
    op_type: str
    domain: str
    node: str


@dataclass(frozen=True)
class Inspection:
    dag: WeightDag
    nonzero: dict[str, int]
    """Nonzero entries of each prunable weight (its current density times its size)."""
    missing_rules: list[MissingRule]
    notes: list[str] = field(default_factory=list)
    """One-line notes on parts of the model left dense or out of the flow (as prune's)."""

    @property
    def rows(self) -> list[LayerRow]:
        """The table's rows: each layer with its nonzero weights as `kept`."""
        return layer_rows(self.dag.layers, self.nonzero)

    @property
    def totals(self) -> Totals:
        return Totals.of(self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [row.inspect_dict() for row in self.rows],
            "missing_rules": [vars(m) for m in self.missing_rules],
            "notes": self.notes,
        }


def inspect_model(
    model: str | os.PathLike[str] | onnx.ModelProto,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    rules: RuleRegistry | None = None,
) -> Inspection:
    """The prunable layers of a model and the ops on its flow path that lack a rule in
    `rules` (default: the default registry): exactly the ops `prune` would refuse, since
    both ask `flow_reach`."""
    # Every stored weight is listed, all-zero ones too (a layer pruned to nothing, say).
    analysis = analyze(model, input_shapes=input_shapes, zero_init="strict")
    tensors = analysis.graph.tensors()
    nonzero = {
        layer.name: int(np.count_nonzero(tensors[layer.name].values))
        for layer in analysis.dag.layers
    }
    # Flow starts where prune's (zero_init="ones") would: all-zero weights are read as ones.
    zero = find_zero_init(analysis.graph, stored_tensor_names(analysis.model)).weights
    sources = [layer.name for layer in analysis.dag.layers if layer.name not in zero]
    missing = [
        MissingRule(node.op, node.domain or "", node.name)
        for node in flow_reach(analysis.graph, sources, rules).missing
    ]
    return Inspection(analysis.dag, nonzero, missing, list(analysis.notes))
