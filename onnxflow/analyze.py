"""The analysis stage, shared by `inspect`, `score` and `prune` (and channel mode).

    load_source -> import_graph -> NormalizePass -> LinearizePass -> prunable_weights

gives an `Analysis` (onnxflow/stages.py): the source model as loaded, the normalized
analysis graph and its weight-layer DAG. It takes only what analysis reads (input shapes,
`zero_init`, `exclude`), never pruning options.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import onnx
import onnx_graphsurgeon as gs

from onnxflow.options import ZERO_INITS, ZeroInit, check_choice, check_input_shapes
from onnxflow.passes.build_dag import prunable_weights
from onnxflow.passes.linearize import LinearizePass
from onnxflow.passes.load import load_source
from onnxflow.passes.normalize import NormalizePass, import_graph
from onnxflow.stages import Analysis, Source
from onnxflow.tensors import stored_tensor_names


def analyze(
    model: str | os.PathLike[str] | onnx.ModelProto,
    *,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    zero_init: ZeroInit = "ones",
    exclude: Sequence[str] = (),
) -> Analysis:
    """Load, check, normalize and linearize a model and find its prunable weights.

    Args:
        model: a path to an .onnx file or a loaded ModelProto (not modified).
        input_shapes: concrete shapes for graph inputs (`PruneOptions.input_shapes`).
        zero_init: `ones` (all-zero weights are not prunable, zero-initialized tensors are
            read as ones) or `strict` (`PruneOptions.zero_init`).
        exclude: glob patterns of weights never pruned (`PruneOptions.exclude`).
    """
    check_choice("zero_init", zero_init, ZERO_INITS)  # before the (slow) loading
    source, graph, notes = normalized(model, input_shapes)
    LinearizePass()(graph)
    return weights_of(source, graph, notes, zero_init=zero_init, exclude=exclude)


def normalized(
    model: str | os.PathLike[str] | onnx.ModelProto,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[Source, gs.Graph, list[str]]:
    """The loaded model and its normalized (not yet linearized) analysis graph, with the
    notes normalization made. Channel mode traces channels on this graph."""
    shapes = check_input_shapes(input_shapes or {})
    source = load_source(model)
    graph = import_graph(source)
    result = NormalizePass(shapes, stored_tensor_names(source.model))(graph)
    return source, graph, list(result.notes)


def weights_of(
    source: Source,
    graph: gs.Graph,
    notes: list[str],
    *,
    zero_init: ZeroInit = "ones",
    exclude: Sequence[str] = (),
) -> Analysis:
    """The Analysis of a normalized, linearized graph: its prunable weights found."""
    check_choice("zero_init", zero_init, ZERO_INITS)
    found = prunable_weights(
        graph,
        stored_tensor_names(source.model),
        exclude=tuple(exclude),
        zero_init=zero_init,
        label=source.label,
    )
    return Analysis(
        source,
        graph,
        found.dag,
        excluded=found.excluded,
        exclude_unmatched=found.exclude_unmatched,
        notes=notes,
        zero_init=found.zero_init,
    )
