"""The pruning report: per-layer counts and totals, as a dataclass and as JSON.

The JSON schema (version 1) is documented in docs/report.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxflow.dag import WeightDag, WeightLayer
from onnxflow.flow.zero_init import ZeroInit
from onnxflow.rows import LayerRow, Totals, layer_rows

if TYPE_CHECKING:
    from onnxflow.options import PruneOptions
    from onnxflow.stages import Analysis, Materialization, Selection

SCHEMA_VERSION = 1


LayerReport = LayerRow  # the former name of a report's row


@dataclass(frozen=True)
class Report:
    layers: list[LayerRow]
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
    excluded: list[LayerRow] = field(default_factory=list)
    """Prunable layers that `exclude` kept whole (not in `layers` nor in the totals)."""
    exclude_unmatched: list[str] = field(default_factory=list)
    """`exclude` patterns that matched no prunable weight (a typo, most likely)."""

    @property
    def totals(self) -> Totals:
        """Sums over `layers` (the excluded layers are not counted)."""
        return Totals.of(self.layers)

    @property
    def params(self) -> int:
        return self.totals.params

    @property
    def kept(self) -> int:
        return self.totals.kept

    @property
    def density(self) -> float:
        return self.totals.density

    @property
    def compression(self) -> float:
        """log10(params / kept): the paper's compression C; inf if nothing is kept."""
        return self.totals.compression

    @property
    def flops(self) -> int:
        return self.totals.flops

    @property
    def flops_kept(self) -> int:
        return self.totals.flops_kept

    @property
    def emptied(self) -> list[str]:
        """Layers pruned to nothing (no input-output path survives through them)."""
        return [layer.name for layer in self.layers if layer.kept == 0]

    def to_dict(self) -> dict[str, Any]:
        totals = self.totals
        return {
            "schema_version": SCHEMA_VERSION,
            "options": self.options,
            "provider": self.provider,
            "layers": [layer.report_dict() for layer in self.layers],
            "totals": {
                "params": totals.params,
                "kept": totals.kept,
                "density": totals.density,
                "compression_log10": None if math.isinf(totals.compression) else totals.compression,
                "log_flow": self.log_flow,
                "emptied_layers": self.emptied,
                "flops": totals.flops,
                "flops_kept": totals.flops_kept,
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
            "excluded_layers": [layer.report_dict(figures=False) for layer in self.excluded],
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
    """The report's rows: each layer's kept weights are its mask's ones; an excluded layer
    keeps all of its weights."""
    kept = {layer.name: int(np.count_nonzero(masks[layer.name])) for layer in dag.layers}
    whole = layer_rows(excluded or [], {layer.name: layer.size for layer in excluded or []})
    return Report(layer_rows(dag.layers, kept), excluded=whole, **kwargs)


def prune_report(
    options: PruneOptions,
    analysis: Analysis,
    selection: Selection,
    output: Materialization,
    seconds: float,
) -> Report:
    """The report of one pruning, built from the three stages' results."""
    opts = dataclasses.asdict(options)
    opts["input_shapes"] = {k: list(v) for k, v in options.input_shapes.items()}
    return build_report(
        analysis.dag,
        selection.masks,
        analysis.excluded,
        options=opts,
        provider=selection.provider,
        log_flow=selection.log_flow,
        seconds=seconds,
        bytes_before=analysis.source.bytes_before,
        bytes_after=output.bytes_after,
        bytes_after_dense=output.bytes_dense,
        pattern_skipped=selection.pattern_skipped,
        external_data=analysis.source.external_data,
        notes=[*analysis.notes, *selection.notes],
        zero_init=analysis.zero_init,
        exclude_unmatched=analysis.exclude_unmatched,
    )
