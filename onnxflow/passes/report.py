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
        state.report = build_report(
            state.dag,
            state.masks,
            options=options,
            provider=state.provider or "cpu",
            log_flow=state.log_flow,
            seconds=time.perf_counter() - state.started,
            bytes_before=state.bytes_before,
            bytes_after=model_bytes(state.pruned),
            bytes_after_dense=state.bytes_dense or model_bytes(state.pruned),
            pattern_skipped=state.pattern_skipped,
            external_data=state.external_data,
        )
