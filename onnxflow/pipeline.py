"""The pass pipeline: an ordered list of passes over one shared `PruneState`.

Each pass reads what earlier passes produced and fills in its own part of the state; a pass
declares what it needs (`requires`) and what it provides (`provides`), and `Sequential` checks
both, so a mis-ordered pipeline fails loudly instead of half-working.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import onnx

from onnxflow.flow.zero_init import ZeroInit
from onnxflow.options import PruneOptions

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from onnxflow.dag import WeightDag, WeightLayer
    from onnxflow.flow.registry import RuleRegistry
    from onnxflow.report import Report

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as `progress(done, total)` after each pruning iteration."""


@dataclass
class PruneState:
    """Everything the passes share. Fields are filled in pipeline order."""

    options: PruneOptions
    source: str | None = None
    base_dir: Path | None = None
    """Folder of the model file: where its external data lives."""
    external_data: bool = False
    """The input keeps tensors in external data files (the output then does too)."""
    bytes_before: int = 0
    """Size of the input: its protobuf and its external data."""
    model: onnx.ModelProto | None = None
    """The model as loaded: the basis of the output, never modified in place."""
    graph: gs.Graph | None = None
    """Normalized analysis copy: static shapes, constants folded."""
    dag: WeightDag | None = None
    excluded: list[WeightLayer] = field(default_factory=list)
    """Prunable layers matched by `options.exclude`: left out of `dag`, never pruned."""
    exclude_unmatched: list[str] = field(default_factory=list)
    """`options.exclude` patterns that matched no prunable layer."""
    masks: dict[str, np.ndarray] | None = None
    log_scores: dict[str, np.ndarray] | None = None
    log_flow: float | None = None
    """Natural log of R, the synaptic flow of the dense network."""
    provider: str | None = None
    pruned: onnx.ModelProto | None = None
    pattern_skipped: list[str] = field(default_factory=list)
    """Layers the N:M pattern could not be applied to."""
    notes: list[str] = field(default_factory=list)
    """One-line notes on parts of the model left dense or out of the flow, and why."""
    zero_init: ZeroInit = field(default_factory=ZeroInit)
    """Zero-initialized tensors the flow model reads as ones (none under "strict")."""
    bytes_dense: int | None = None
    """Serialized size of the pruned model with every weight stored densely."""
    report: Report | None = None
    progress: ProgressCallback | None = None
    keep_scores: bool = True
    """Keep the dense network's log-scores (float64, per weight) in `log_scores`."""
    rules: RuleRegistry | None = None
    """The flow rules to score with (None: the default registry)."""
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


class Pass:
    """One step of the pipeline. Subclasses implement `run` and declare their fields."""

    requires: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()

    def run(self, state: PruneState) -> None:
        raise NotImplementedError

    def __call__(self, state: PruneState) -> PruneState:
        missing = [f for f in self.requires if getattr(state, f) is None]
        if missing:
            raise RuntimeError(f"{type(self).__name__} needs {missing} from an earlier pass")
        t0 = time.perf_counter()
        self.run(state)
        state.timings[type(self).__name__] = time.perf_counter() - t0
        unset = [f for f in self.provides if getattr(state, f) is None]
        if unset:
            raise RuntimeError(f"{type(self).__name__} did not provide {unset}")
        logger.debug("%s took %.3fs", type(self).__name__, state.timings[type(self).__name__])
        return state


class Sequential:
    """Runs passes in order."""

    def __init__(self, *passes: Pass) -> None:
        self.passes: Sequence[Pass] = passes

    def __call__(self, state: PruneState) -> PruneState:
        for p in self.passes:
            state = p(state)
        return state
