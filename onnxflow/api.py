"""The Python API: `prune()` builds the pipeline and runs it; `save()` writes the results."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, overload

import numpy as np
import onnx

from onnxflow.dag import WeightDag
from onnxflow.errors import OnnxflowError
from onnxflow.external import ExternalDataWriter, data_path, external_info
from onnxflow.flow.engine import FlowEngine
from onnxflow.flow.registry import RuleRegistry
from onnxflow.options import DEFAULTS, GRANULARITIES, PruneOptions, check_choice
from onnxflow.passes import (
    ApplyMasksPass,
    BuildDagPass,
    LinearizePass,
    LoadPass,
    NormalizePass,
    ReportPass,
    SparseStoragePass,
    SynFlowPass,
)
from onnxflow.pipeline import Pass, ProgressCallback, PruneState, Sequential
from onnxflow.plot import density_figure, png_writer
from onnxflow.report import Report
from onnxflow.runtime import resolve_provider

if TYPE_CHECKING:
    from onnxflow.channels.api import ChannelResult
from onnxflow.save import (
    Writer,
    check_output_paths,
    model_writer,
    npz_writer,
    text_writer,
    write_atomically,
)


class PruneResult(NamedTuple):
    model: onnx.ModelProto
    """The pruned model: the input with masked weights zeroed."""
    masks: dict[str, np.ndarray]
    """Boolean keep-masks by weight initializer name, shaped like the weight."""
    log_scores: dict[str, np.ndarray]
    """Dense-network SynFlow scores as float64 natural logs (-inf where 0)."""
    report: Report


def initial_state(
    model: str | os.PathLike[str] | onnx.ModelProto,
    options: PruneOptions,
    progress: ProgressCallback | None = None,
) -> PruneState:
    """The pipeline's starting state for a path (loaded by LoadPass) or a loaded model."""
    state = PruneState(options=options, progress=progress)
    if isinstance(model, onnx.ModelProto):
        state.model = model
    else:
        state.source = os.fspath(model)
    return state


def analysis_passes() -> list[Pass]:
    """Load, normalize, linearize and find the weight-layer DAG: everything before scoring."""
    return [LoadPass(), NormalizePass(), LinearizePass(), BuildDagPass()]


def build_pipeline() -> Sequential:
    """The one pruning pipeline."""
    return Sequential(
        *analysis_passes(), SynFlowPass(), ApplyMasksPass(), SparseStoragePass(), ReportPass()
    )


def make_options(
    *, sparsity: float | None = None, compression: float | None = None, **kwargs: Any
) -> PruneOptions:
    """PruneOptions from exactly one of sparsity or compression (keep 10^-C); with a
    `pattern`, neither is needed (the pattern sets the target)."""
    if sparsity is not None and compression is not None:
        raise OnnxflowError("give exactly one of sparsity or compression")
    if sparsity is None and compression is None and kwargs.get("pattern") is None:
        raise OnnxflowError("give exactly one of sparsity or compression")
    if compression is not None:
        sparsity = PruneOptions.sparsity_from_compression(compression)
    return PruneOptions(sparsity=sparsity, **kwargs)


@overload
def prune(
    model: str | os.PathLike[str] | onnx.ModelProto,
    options: PruneOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    keep_scores: bool = True,
    rules: RuleRegistry | None = None,
    granularity: Literal["weight"] = "weight",
    **kwargs: Any,
) -> PruneResult: ...


@overload
def prune(
    model: str | os.PathLike[str] | onnx.ModelProto,
    options: PruneOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    keep_scores: bool = True,
    rules: RuleRegistry | None = None,
    granularity: Literal["channel"],
    channel_multiple: int = 1,
    latency: bool = False,
    ranking: str | None = None,
    **kwargs: Any,
) -> ChannelResult: ...


def prune(
    model: str | os.PathLike[str] | onnx.ModelProto,
    options: PruneOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    keep_scores: bool = True,
    rules: RuleRegistry | None = None,
    granularity: str = "weight",
    channel_multiple: int = 1,
    latency: bool = False,
    ranking: str | None = None,
    **kwargs: Any,
) -> PruneResult | ChannelResult:
    """Prune a model with iterative SynFlow.

    Args:
        model: a path to an .onnx file or a loaded ModelProto (not modified).
        options: a PruneOptions; or pass its fields as keyword arguments instead, with
            `sparsity=` or `compression=` (e.g. `prune("m.onnx", sparsity=0.99)`).
        progress: called as progress(done, total) after each iteration.
        keep_scores: return the dense network's log-scores (float64: twice the memory of a
            float32 model); with False, `log_scores` is an empty dict.
        rules: the flow rules to score with (a `RuleRegistry`, e.g. a copy of
            `default_rules()` with a custom op's rule); None: the default registry.
        granularity: `weight` (zero single weights) or `channel` (remove whole channels:
            the result is a compact model, see docs/channels.md).
        channel_multiple: channel mode: keep channel counts multiples of this.
        latency: channel mode: time both models in onnxruntime.
        ranking: channel mode: `flow-per-flop` (default), `flow` or `flow-per-weight`.

    Returns:
        PruneResult(model, masks, log_scores, report); in channel mode a
        ChannelResult(model, masks, kept, report, channels).
    """
    check_choice("granularity", granularity, GRANULARITIES)
    if options is None:
        options = make_options(**kwargs)
    elif kwargs:
        raise TypeError("pass either options or keyword options, not both")
    if rules is not None and granularity == "channel":
        raise TypeError("rules= is not supported with granularity='channel'")
    if granularity == "channel":
        from onnxflow.channels.api import prune_channels
        from onnxflow.channels.score import DEFAULT_RANKING

        return prune_channels(
            model,
            options,
            channel_multiple=channel_multiple,
            latency=latency,
            progress=progress,
            ranking=ranking or DEFAULT_RANKING,
        )
    if channel_multiple != 1 or latency or ranking is not None:
        raise OnnxflowError("channel_multiple, latency and ranking need granularity='channel'")
    start = initial_state(model, options, progress)
    start.keep_scores = keep_scores
    start.rules = rules
    state = build_pipeline()(start)
    assert state.pruned is not None and state.masks is not None
    assert state.log_scores is not None and state.report is not None
    return PruneResult(state.pruned, state.masks, state.log_scores, state.report)


class ScoreResult(NamedTuple):
    log_scores: dict[str, np.ndarray]
    """Dense-network SynFlow scores as float64 natural logs (-inf where 0)."""
    log_flow: float
    """Natural log of R, the total synaptic flow of the dense network."""
    dag: WeightDag


def score(
    model: str | os.PathLike[str] | onnx.ModelProto,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    provider: str = DEFAULTS.provider,
    zero_init: str = DEFAULTS.zero_init,
    rules: RuleRegistry | None = None,
) -> ScoreResult:
    """SynFlow scores of the dense network, without pruning (one flow-model run).

    `zero_init` is PruneOptions.zero_init: with "ones", all-zero weights are not prunable
    and have no score; zero-initialized tensors are read as ones. `rules`: the flow rules
    (None: the default registry)."""
    options = PruneOptions(
        sparsity=0.0,
        input_shapes=input_shapes or {},
        provider=provider,  # type: ignore[arg-type]
        zero_init=zero_init,  # type: ignore[arg-type]
    )
    state = Sequential(*analysis_passes())(initial_state(model, options))
    assert state.graph is not None and state.dag is not None
    provider_name = resolve_provider(options.provider)
    scores = FlowEngine(state.graph, state.dag, provider_name, rules).run()
    return ScoreResult(scores.log(), scores.log_flow, state.dag)


# Models larger than this are written with external data even if the input had none.
EXTERNAL_OVER_BYTES = 1_800_000_000


def _check_not_input_data(source: str | os.PathLike[str] | None, path: Path) -> None:
    """The output's data file must not be one of the input's external data files."""
    if source is None or not Path(source).is_file():
        return
    base = Path(source).resolve().parent
    skeleton = onnx.load(os.fspath(source), load_external_data=False)
    for t in skeleton.graph.initializer:
        info = external_info(t)
        if "location" in info and (base / info["location"]).resolve() == path.resolve():
            raise OnnxflowError(
                f"the output's external data file {path} is the input's external data; "
                "choose another output name"
            )


def default_output(source: str | os.PathLike[str]) -> Path:
    """`<stem>.pruned.onnx` beside the input."""
    p = Path(source)
    if p.is_dir() or not p.name:
        raise OnnxflowError(f"{p} is a directory, not an ONNX model file")
    return p.with_name(f"{p.stem}.pruned.onnx")


def output_paths(
    output: Path,
    masks: Path | None,
    scores: Path | None,
    report: Path | None,
    plot: Path | None = None,
) -> dict[str, Path]:
    paths = {
        "output": output, "masks": masks, "scores": scores, "report": report, "plot": plot
    }  # fmt: skip
    return {k: v for k, v in paths.items() if v is not None}


def save(
    result: PruneResult,
    output: str | os.PathLike[str],
    *,
    masks: str | os.PathLike[str] | None = None,
    scores: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
    plot: str | os.PathLike[str] | None = None,
    source: str | os.PathLike[str] | None = None,
) -> dict[str, Path]:
    """Write the pruned model and, optionally, masks/scores (.npz), the report (.json) and
    a plot of density per layer (.png, needs matplotlib).

    All files are written atomically and together: on failure none of them changes.

    Returns:
        The files written, by role ("output", "external data", "masks", ...).
    """
    paths = output_paths(
        Path(output), *(Path(p) if p is not None else None for p in (masks, scores, report, plot))
    )
    # bytes_after is the pruned model's size, measured once by ReportPass.
    external = result.report.external_data or result.report.bytes_after > EXTERNAL_OVER_BYTES
    if external:
        paths["external data"] = data_path(paths["output"])
        _check_not_input_data(source, paths["external data"])
    check_output_paths(source, paths)
    writers: dict[Path, Writer] = {}
    if external:  # the data file first: the model writer needs its layout
        out = ExternalDataWriter(result.model, paths["external data"].name)
        writers[paths["external data"]] = out.write_data
        writers[paths["output"]] = out.write_model
    else:
        writers[paths["output"]] = model_writer(result.model)
    if "masks" in paths:
        writers[paths["masks"]] = npz_writer(result.masks)
    if "scores" in paths:
        writers[paths["scores"]] = npz_writer(result.log_scores, compress=False)
    if "report" in paths:
        writers[paths["report"]] = text_writer(result.report.to_json())
    if "plot" in paths:
        r = result.report
        fig = density_figure(
            r.layers,
            f"{r.options.get('method', 'synflow')}: density per layer, "
            f"{r.kept:,} of {r.params:,} weights kept",
        )
        writers[paths["plot"]] = png_writer(fig)
    write_atomically(writers)
    return paths
