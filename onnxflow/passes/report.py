"""ReportPass: per-layer counts and totals of the pruning."""

from __future__ import annotations

import dataclasses
import time

from onnxflow.external import model_bytes
from onnxflow.pipeline import Pass, PruneState
from onnxflow.report import build_report


class ReportPass(Pass):
    requires = ("model", "dag", "masks", "pruned")
    provides = ("report",)

    def run(self, state: PruneState) -> None:
        assert state.dag is not None and state.masks is not None
        assert state.model is not None and state.pruned is not None
        options = dataclasses.asdict(state.options)
        options["input_shapes"] = {k: list(v) for k, v in state.options.input_shapes.items()}
        # SparseStoragePass measured the dense model; only a sparse one is measured again.
        dense = state.bytes_dense if state.bytes_dense is not None else model_bytes(state.pruned)
        after = model_bytes(state.pruned) if state.options.sparse_storage else dense
        state.report = build_report(
            state.dag,
            state.masks,
            state.excluded,
            options=options,
            provider=state.provider or "cpu",
            log_flow=state.log_flow,
            seconds=time.perf_counter() - state.started,
            bytes_before=state.bytes_before,
            bytes_after=after,
            bytes_after_dense=dense,
            pattern_skipped=state.pattern_skipped,
            external_data=state.external_data,
            notes=list(state.notes),
            zero_init=state.zero_init,
            exclude_unmatched=state.exclude_unmatched,
        )
