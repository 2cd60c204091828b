"""Inspection without pruning: the weight-layer DAG, current densities, ops lacking a rule."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxflow.api import analysis_passes, initial_state
from onnxflow.dag import WeightDag
from onnxflow.flow.reach import flow_reach
from onnxflow.flow.registry import RuleRegistry
from onnxflow.flow.zero_init import find_zero_init
from onnxflow.options import PruneOptions
from onnxflow.pipeline import Sequential
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
    options = PruneOptions(sparsity=0.0, input_shapes=input_shapes or {}, zero_init="strict")
    state = Sequential(*analysis_passes())(initial_state(model, options))
    assert state.graph is not None and state.dag is not None
    tensors = state.graph.tensors()
    nonzero = {
        layer.name: int(np.count_nonzero(tensors[layer.name].values)) for layer in state.dag.layers
    }
    # Flow starts where prune's (zero_init="ones") would: all-zero weights are read as ones.
    assert state.model is not None
    zero = find_zero_init(state.graph, stored_tensor_names(state.model)).weights
    sources = [layer.name for layer in state.dag.layers if layer.name not in zero]
    missing = [
        MissingRule(node.op, node.domain or "", node.name)
        for node in flow_reach(state.graph, sources, rules).missing
    ]
    return Inspection(state.dag, nonzero, missing, list(state.notes))
