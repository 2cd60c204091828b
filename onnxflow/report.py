"""The pruning report: per-layer counts and totals, as a dataclass and as JSON.

The JSON schema (version 1) is documented in docs/report.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from onnxflow.dag import WeightDag, WeightLayer
from onnxflow.flow.zero_init import ZeroInit

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LayerReport:
    name: str
    """Initializer name of the weight (the key in masks and scores)."""
    nodes: list[str]
    op: str
    shape: list[int]
    params: int
    kept: int
    uses: int = 0
    """Multiply-accumulates per weight per forward pass."""

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


@dataclass(frozen=True)
class Report:
    layers: list[LayerReport]
    options: dict[str, Any] = field(default_factory=dict)
    provider: str = "cpu"
    log_flow: float | None = None
    """Natural log of the dense network's synaptic flow R."""
    seconds: float = 0.0
    bytes_before: int = 0
    bytes_after: int = 0
    """Serialized size of the input and of the pruned model as written."""
    bytes_after_dense: int = 0
    """Size of the pruned model with dense weights (= bytes_after without sparse storage)."""
    pattern_skipped: list[str] = field(default_factory=list)
    """Layers an N:M pattern could not be applied to (their shape does not allow it)."""
    external_data: bool = False
    """The input kept tensors in external data files; the output is written that way too."""
    notes: list[str] = field(default_factory=list)
    """One-line notes on parts of the model left dense or out of the flow, and why."""
    zero_init: ZeroInit = field(default_factory=ZeroInit)
    """Zero-initialized tensors the flow read as ones (`PruneOptions.zero_init`)."""
    excluded: list[LayerReport] = field(default_factory=list)
    """Prunable layers that `exclude` kept whole (not in `layers` nor in the totals)."""
    exclude_unmatched: list[str] = field(default_factory=list)
    """`exclude` patterns that matched no prunable weight (a typo, most likely)."""

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def kept(self) -> int:
        return sum(layer.kept for layer in self.layers)

    @property
    def density(self) -> float:
        return self.kept / self.params if self.params else 0.0

    @property
    def compression(self) -> float:
        """log10(params / kept): the paper's compression C; inf if nothing is kept."""
        return math.log10(self.params / self.kept) if self.kept else math.inf

    @property
    def flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def flops_kept(self) -> int:
        return sum(layer.flops_kept for layer in self.layers)

    @property
    def emptied(self) -> list[str]:
        """Layers pruned to nothing (no input-output path survives through them)."""
        return [layer.name for layer in self.layers if layer.kept == 0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "options": self.options,
            "provider": self.provider,
            "layers": [
                {
                    **asdict(layer),
                    "density": layer.density,
                    "flops": layer.flops,
                    "flops_kept": layer.flops_kept,
                }
                for layer in self.layers
            ],
            "totals": {
                "params": self.params,
                "kept": self.kept,
                "density": self.density,
                "compression_log10": None if math.isinf(self.compression) else self.compression,
                "log_flow": self.log_flow,
                "emptied_layers": self.emptied,
                "flops": self.flops,
                "flops_kept": self.flops_kept,
                "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after,
                "bytes_after_dense": self.bytes_after_dense,
                "pattern_skipped_layers": self.pattern_skipped,
                "external_data": self.external_data,
                "zero_init": {
                    "weights": list(self.zero_init.weights),
                    "scales": list(self.zero_init.scales),
                },
                "exclude_unmatched": self.exclude_unmatched,
            },
            "excluded_layers": [asdict(layer) for layer in self.excluded],
            "notes": self.notes,
            "seconds": self.seconds,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def build_report(
    dag: WeightDag,
    masks: dict[str, np.ndarray],
    excluded: list[WeightLayer] | None = None,
    **kwargs: Any,
) -> Report:
    kept_whole = [
        LayerReport(
            name=layer.name,
            nodes=list(layer.nodes),
            op=layer.op,
            shape=list(layer.shape),
            params=layer.size,
            kept=layer.size,
            uses=layer.uses,
        )
        for layer in excluded or []
    ]
    layers = [
        LayerReport(
            name=layer.name,
            nodes=list(layer.nodes),
            op=layer.op,
            shape=list(layer.shape),
            params=layer.size,
            kept=int(np.count_nonzero(masks[layer.name])),
            uses=layer.uses,
        )
        for layer in dag.layers
    ]
    return Report(layers, excluded=kept_whole, **kwargs)
