"""The Python API: `prune()` runs the stages (analyze -> select -> materialize -> report);
`save()` writes the results as the materialization's storage plan says.

docs/architecture.md maps the stages and the types that pass between them."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, overload

import numpy as np
import onnx

from onnxflow.analyze import analyze
from onnxflow.dag import WeightDag
from onnxflow.errors import OnnxflowError
from onnxflow.external import ExternalDataWriter, data_path, external_info
from onnxflow.flow.engine import FlowEngine
from onnxflow.flow.registry import RuleRegistry
from onnxflow.materialize import materialize
from onnxflow.options import (
    DEFAULTS,
    GRANULARITIES,
    PROVIDERS,
    ZERO_INITS,
    PruneOptions,
    check_choice,
)
from onnxflow.passes.synflow import no_flow_message, select
from onnxflow.plot import density_figure, png_writer
from onnxflow.report import Report, prune_report
from onnxflow.runtime import resolve_provider
from onnxflow.scores import lossy_join_note
from onnxflow.stages import Materialization, ProgressCallback, Selection

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

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneResult:
    """What `prune` returns. Unpacks as `model, masks, log_scores, report`."""

    output: Materialization
    """The pruned model, its sizes and how `save` writes it."""
    selection: Selection
    """The masks, the dense network's scores, R and the provider."""
    report: Report

    @property
    def model(self) -> onnx.ModelProto:
        """The pruned model: the input with masked weights zeroed."""
        return self.output.model

    @property
    def masks(self) -> dict[str, np.ndarray]:
        """Boolean keep-masks by weight initializer name, shaped like the weight."""
        return self.selection.masks

    @property
    def log_scores(self) -> dict[str, np.ndarray]:
        """Dense-network SynFlow scores as float64 natural logs (-inf where 0)."""
        return self.selection.log_scores

    def __iter__(self) -> Iterator[Any]:
        """`model, masks, log_scores, report = prune(...)`, as before results were typed."""
        return iter((self.model, self.masks, self.log_scores, self.report))


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
    channel_multiple: int | str | None = None,
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
    channel_multiple: int | str | None = None,
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
        channel_multiple: channel mode: keep channel counts multiples of this; None or
            `"auto"`: counts above 16 stay multiples of 16, free below (docs/channels.md).
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
            channel_multiple="auto" if channel_multiple is None else channel_multiple,
            latency=latency,
            progress=progress,
            ranking=ranking or DEFAULT_RANKING,
        )
    if channel_multiple is not None or latency or ranking is not None:
        raise OnnxflowError("channel_multiple, latency and ranking need granularity='channel'")
    started = time.perf_counter()
    analysis = analyze(
        model,
        input_shapes=options.input_shapes,
        zero_init=options.zero_init,
        exclude=options.exclude,
    )
    selection = select(
        analysis.graph,
        analysis.dag,
        options,
        rules=rules,
        progress=progress,
        keep_scores=keep_scores,
    )
    output = materialize(analysis, selection.masks, sparse_storage=options.sparse_storage)
    report = prune_report(options, analysis, selection, output, time.perf_counter() - started)
    return PruneResult(output, selection, report)


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
    (None: the default registry).

    A network that carries no synaptic flow (R = 0: every score is 0, a ranking of ties) is
    refused with the same error as `prune`'s."""
    check_choice("provider", provider, PROVIDERS)
    check_choice("zero_init", zero_init, ZERO_INITS)
    analysis = analyze(model, input_shapes=input_shapes, zero_init=zero_init)  # type: ignore[arg-type]
    engine = FlowEngine(analysis.graph, analysis.dag, resolve_provider(provider), rules)
    scores = engine.run()
    if scores.log_flow == -np.inf:
        raise OnnxflowError(no_flow_message(engine))
    note = lossy_join_note(scores.lossy_joins)
    if note is not None:
        logger.warning(note)
    return ScoreResult(scores.log(), scores.log_flow, analysis.dag)


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
    external = result.output.storage.external_data  # decided by `materialize`
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
