"""The typed results that pass from one stage of pruning to the next.

    CLI -> api.prune -> analyze() -> Analysis -> select() -> Selection
        -> materialize() -> Materialization -> save() / prune_report() -> Report

Each stage takes what it reads as arguments and returns a new, complete result: no field is
filled later and nothing is optional "until a pass has run", so a reader (and mypy) can follow
every value from the command line to the file. This module holds the types only; the stages
that produce them live beside their parts (`onnxflow.analyze`, `onnxflow.passes.synflow`,
`onnxflow.materialize`, `onnxflow.report`). docs/architecture.md draws the map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxflow.flow.zero_init import ZeroInit

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from onnxflow.dag import WeightDag, WeightLayer

ProgressCallback = Callable[[int, int], None]
"""Called as `progress(done, total)` after each pruning iteration."""


@dataclass(frozen=True)
class Source:
    """A model as loaded and checked, before any analysis."""

    model: onnx.ModelProto
    """The model as loaded (sparse initializers made dense): the basis of the output."""
    label: str
    """How messages name the model: its path, or "model" for one given in memory."""
    base_dir: Path | None = None
    """Folder of the model file, where its external data lives (None: given in memory)."""
    external_data: bool = False
    """The file keeps tensors in external data files (large ones are still there)."""
    bytes_before: int = 0
    """Size of the input: its protobuf and its external data."""

    @property
    def owned(self) -> bool:
        """Loaded here from a file: nobody else holds `model`, so the output may be made
        from it in place (saving a full copy of the weights). A model the caller passed
        in memory is never modified."""
        return self.base_dir is not None


@dataclass(frozen=True)
class Analysis:
    """What every command needs to know about a model before scoring it (`analyze`)."""

    source: Source
    graph: gs.Graph
    """Normalized, linearized analysis copy: static shapes, constants folded. The pruned
    model is made from `source.model`, never from this graph."""
    dag: WeightDag
    """The prunable weight layers (less the excluded and the all-zero ones) and how they
    connect."""
    excluded: list[WeightLayer] = field(default_factory=list)
    """Prunable layers matched by an `exclude` pattern: left out of `dag`, never pruned."""
    exclude_unmatched: list[str] = field(default_factory=list)
    """`exclude` patterns that matched no prunable layer."""
    notes: list[str] = field(default_factory=list)
    """One-line notes on parts of the model left dense or out of the flow, and why."""
    zero_init: ZeroInit = field(default_factory=ZeroInit)
    """Zero-initialized tensors the flow model reads as ones (none under "strict")."""

    @property
    def model(self) -> onnx.ModelProto:
        return self.source.model


@dataclass
class Selection:
    """What a pruning loop chose: the masks, and what the dense network's scores were."""

    masks: dict[str, np.ndarray]
    """Boolean keep-masks by weight initializer name, shaped like the weight."""
    log_scores: dict[str, np.ndarray]
    """Dense-network scores as float64 natural logs (-inf where 0); empty if not kept."""
    log_flow: float
    """Natural log of R, the synaptic flow of the dense network."""
    provider: str
    """The onnxruntime execution provider the scores were computed with."""
    pattern_skipped: list[str] = field(default_factory=list)
    """Layers the N:M pattern could not be applied to."""
    notes: list[str] = field(default_factory=list)
    """One-line notes on the scores themselves (where float32 lost some of them)."""


@dataclass(frozen=True)
class StoragePlan:
    """How the output model is written: decided once, by `materialize`, and followed by
    `api.save` (the report only describes it)."""

    external_data: bool
    """Tensors go to a data file beside the model: the input had external data, or the
    output is too large for one protobuf (`materialize.EXTERNAL_OVER_BYTES`)."""
    sparse: bool
    """Pruned weights are stored as ONNX sparse initializers (already so in the model)."""


@dataclass(frozen=True)
class Materialization:
    """The output: the pruned model, its sizes and how it is to be stored."""

    model: onnx.ModelProto
    """The pruned model: the input with masked weights zeroed (and stored sparsely under
    `storage.sparse`)."""
    bytes_dense: int
    """Serialized size of the pruned model with every weight stored densely."""
    bytes_after: int
    """Serialized size of the pruned model as it will be written (= `bytes_dense` unless
    stored sparsely)."""
    storage: StoragePlan
