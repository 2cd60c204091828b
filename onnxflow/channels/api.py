"""Channel pruning end to end: analysis -> groups -> scores and selection -> compact model.

Reuses the weight mode's analysis passes and flow engine; the stages pass typed results
(`ChannelGroups`, `Selection`) to each other.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import onnx

from onnxflow.analyze import normalized, weights_of
from onnxflow.channels.groups import IN, OUT, Aliases, ChannelGroups, trace_channels
from onnxflow.channels.materialize import check_equivalent, materialize
from onnxflow.channels.report import ChannelReport, groups_json, measure_latency, params_of
from onnxflow.channels.score import (
    AUTO,
    DEFAULT_RANKING,
    RANKINGS,
    GroupScorer,
    Multiple,
    ScoreFn,
    Selection,
    no_prunable_message,
    select_groups,
)
from onnxflow.dag import WeightDag, build_weight_dag
from onnxflow.errors import OnnxflowError, Opt
from onnxflow.external import constant_array, model_bytes
from onnxflow.flow.engine import FlowEngine, FlowScores
from onnxflow.options import PruneOptions, check_choice
from onnxflow.passes import LinearizePass
from onnxflow.passes.apply_masks import apply_masks
from onnxflow.passes.synflow import no_flow_message
from onnxflow.rows import layer_rows
from onnxflow.runtime import resolve_provider
from onnxflow.scores import Scores
from onnxflow.stages import Analysis as WeightAnalysis
from onnxflow.stages import ProgressCallback
from onnxflow.tensors import stored_tensor_names


class ChannelResult(NamedTuple):
    model: onnx.ModelProto
    """The compact model: removed channels gone from every tensor that carried them."""
    masks: dict[str, np.ndarray]
    """Boolean keep-masks on the original weights' shapes (False on removed slices)."""
    kept: dict[str, dict[int, list[int]]]
    """Kept indices by stored tensor name and axis."""
    report: ChannelReport
    channels: dict[str, object]
    """Every group with its members, score and fate (what `--channels` writes)."""


def check_channel_options(
    options: PruneOptions,
    channel_multiple: Multiple,
    ranking: str = DEFAULT_RANKING,
    weight_only: Sequence[str] = (),
) -> None:
    """Refuse what channel mode cannot do, naming the options by field (errors.py).

    `weight_only`: further weight-mode outputs that were asked for (the CLI's `scores`,
    `plot`)."""
    if options.pattern is not None:
        raise OnnxflowError(
            "{opt} prunes weights; it cannot be combined with channel mode", opt=Opt("pattern")
        )
    given = [
        Opt(f, "local") if f == "scope" else Opt(f)
        for f, on in (
            ("sparse_storage", options.sparse_storage),
            ("min_kept", options.min_kept),
            ("scope", options.scope == "local"),
        )
        if on
    ] + [Opt(f) for f in weight_only]
    if given:
        parts = {f"opt{i}": opt for i, opt in enumerate(given)}
        raise OnnxflowError(
            ", ".join("{" + k + "}" for k in parts) + ": weight mode only, not with channel mode",
            **parts,
        )
    k = channel_multiple
    if k != AUTO and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise OnnxflowError(
            "{opt} must be an integer >= 1 or 'auto', got {k!r}", opt=Opt("channel_multiple"), k=k
        )
    if options.sparsity is None:
        raise OnnxflowError("give a sparsity or a compression for channel mode")
    check_choice("ranking", ranking, RANKINGS)


class Analysis(NamedTuple):
    base: WeightAnalysis
    """The weight mode's analysis (`onnxflow.analyze`): source model, graph, DAG."""
    groups: ChannelGroups
    dag: WeightDag


def analyse(model: str | os.PathLike[str] | onnx.ModelProto, options: PruneOptions) -> Analysis:
    """Load and normalize the model, trace channel groups on the unlinearized graph, then
    linearize and build the weight DAG for the flow engine."""
    source, graph, notes = normalized(model, options.input_shapes)
    raw = graph.copy()
    LinearizePass()(graph)
    base = weights_of(source, graph, notes, zero_init=options.zero_init, exclude=options.exclude)
    names = stored_tensor_names(source.model)
    full = build_weight_dag(graph, names)
    stored = Aliases.of(source.model, names)
    chosen = {layer.name for layer in base.dag.layers}
    excluded = [layer.name for layer in full.layers if layer.name not in chosen]
    shapes = {layer.name: layer.shape for layer in full.layers}
    groups = trace_channels(raw, stored, shapes, excluded)
    groups.weights &= chosen
    return Analysis(base, groups, base.dag)


def score_function(analysis: Analysis, method: str, seed: int, provider: str) -> ScoreFn:
    """Group log-scores on the network with some groups removed: SynFlow on the masked
    network, or the fixed baselines (L1 of the group's slices; seeded random)."""
    cg, state = analysis.groups, analysis.base
    n = max((g.id for g in cg.groups), default=-1) + 1
    if method == "random":
        fixed = np.log(np.random.default_rng(seed).random(n) + 1e-12)
        return lambda removed: fixed
    if method == "magnitude":
        tensors = state.graph.tensors()
        values = {
            name: np.abs(constant_array(tensors[name]), dtype=np.float32) for name in cg.weights
        }
        scores = Scores(values, dict.fromkeys(values, 0.0))
        fixed = GroupScorer(cg, (IN, OUT))(scores)
        return lambda removed: fixed
    return SynFlowScore(analysis, provider)


class SynFlowScore:
    """Group scores from the weight mode's flow engine, on the network with the removed
    groups' slices masked (one onnxruntime session for the whole run)."""

    def __init__(self, analysis: Analysis, provider: str) -> None:
        self.groups = analysis.groups
        self.by_id = {g.id: g for g in analysis.groups.groups}
        self.engine = FlowEngine(analysis.base.graph, analysis.dag, provider)
        self.scorer = GroupScorer(analysis.groups)
        self.pruned: set[int] = set()
        self.dense_log_flow = -np.inf
        """log R of the dense network (set by the first call)."""

    def _run(self, removed: set[int]) -> FlowScores:
        if not self.pruned <= removed:
            raise ValueError("removed groups cannot come back")
        for g in removed - self.pruned:  # zero only the new slices, in place
            for s in self.by_id[g].slices:
                w = self.engine.weights.get(s.tensor)
                if s.weight and w is not None:
                    index: list[slice | np.ndarray] = [slice(None)] * w.ndim
                    index[s.axis] = s.index
                    w[tuple(index)] = 0
        self.pruned = set(removed)
        scores = self.engine.run(check=not removed)
        if not removed:
            self.dense_log_flow = float(scores.log_flow)
        return scores

    def __call__(self, removed: set[int]) -> np.ndarray:
        scores = self._run(removed)
        if not removed and scores.log_flow == -np.inf:
            raise OnnxflowError(no_flow_message(self.engine))
        return self.scorer(scores)

    def flow_after(self, removed: set[int]) -> float:
        """log R of the network with `removed` masked."""
        return float(self._run(removed).log_flow)


def prune_channels(
    model: str | os.PathLike[str] | onnx.ModelProto,
    options: PruneOptions,
    *,
    channel_multiple: Multiple = AUTO,
    latency: bool = False,
    progress: ProgressCallback | None = None,
    ranking: str = DEFAULT_RANKING,
) -> ChannelResult:
    """Remove whole channels: the compact model, masks on the original and the report."""
    started = time.perf_counter()
    check_channel_options(options, channel_multiple, ranking)
    analysis = analyse(model, options)
    cg, state = analysis.groups, analysis.base
    assert options.sparsity is not None
    if not cg.prunable:
        raise OnnxflowError(no_prunable_message(cg))
    provider = resolve_provider(options.provider)
    score = score_function(analysis, options.method, options.seed, provider)
    sel: Selection = select_groups(
        cg, score, options.sparsity, options.iterations, options.schedule, channel_multiple,
        progress, ranking, {layer.name: max(layer.uses, 1) for layer in analysis.dag.layers},
    )  # fmt: skip
    flows = None
    if isinstance(score, SynFlowScore):
        flows = (score.dense_log_flow, score.flow_after(sel.removed))
    masks = {n: m for n, m in cg.masks(sel.removed).items() if n in cg.weights}
    compact, kept = materialize(state.model, cg, sel.removed, state.source.base_dir)
    masked = apply_masks(state.model, masks, state.source.base_dir)
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in state.graph.inputs}
    worst = check_equivalent(masked, compact, shapes)
    timing = measure_latency(state.model, compact, shapes) if latency else None
    report = _report(analysis, sel, masks, compact, flows, worst, timing, started)
    report = report._replace(
        options={**_options_dict(options, channel_multiple), "ranking": ranking}
    )
    return ChannelResult(compact, masks, kept, report, groups_json(cg, sel, kept))


def _options_dict(options: PruneOptions, multiple: Multiple) -> dict[str, object]:
    return {
        "granularity": "channel",
        "sparsity": options.sparsity,
        "iterations": options.iterations,
        "schedule": options.schedule,
        "method": options.method,
        "seed": options.seed,
        "exclude": list(options.exclude),
        "channel_multiple": multiple,
    }


def _report(
    analysis: Analysis,
    sel: Selection,
    masks: dict[str, np.ndarray],
    compact: onnx.ModelProto,
    flows: tuple[float, float] | None,
    worst: float,
    timing: tuple[float, float] | None,
    started: float,
) -> ChannelReport:
    state, cg, dag = analysis.base, analysis.groups, analysis.dag
    kept = {layer.name: int(np.count_nonzero(masks[layer.name])) for layer in dag.layers}
    return ChannelReport(
        groups=len(cg.groups),
        prunable_groups=len(cg.prunable),
        removed_groups=len(sel.removed),
        frozen=cg.frozen_summary(),
        layers=layer_rows(dag.layers, kept),
        prunable_weights=sel.budget.total,
        params_before=params_of(state.model),
        params_after=params_of(compact),
        bytes_before=state.source.bytes_before,
        bytes_after=model_bytes(compact),
        log_flow=None if flows is None else flows[0],
        log_flow_after=None if flows is None else flows[1],
        max_relative_difference=worst,
        latency_before_ms=None if timing is None else timing[0],
        latency_after_ms=None if timing is None else timing[1],
        seconds=time.perf_counter() - started,
    )
