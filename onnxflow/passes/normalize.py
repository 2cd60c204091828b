"""NormalizePass: the analysis graph with static shapes and constants folded.

The flow computation needs every tensor's shape: the all-ones input has to be built, and
transposed ops (Conv's backward, Concat's split) are sized statically. This pass fixes the
input shapes (free batch dimension -> 1, anything else from `--input-shape`), folds constant
subgraphs so weights and shape operands become plain constants, and infers the shape of every
remaining tensor, falling back to one onnxruntime run for the tensors shape inference misses.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxflow.dag import weight_view_nodes
from onnxflow.errors import OnnxflowError, Opt, one_line
from onnxflow.external import attach
from onnxflow.passes.base import GraphPass, PassResult
from onnxflow.passes.computed_weights import (
    computed_weight_views,
    computed_weights_note,
    constant_factors_note,
)
from onnxflow.passes.inline_if import InlineIfPass, refuse_control_flow
from onnxflow.passes.selection import CutSelectionPass, activations
from onnxflow.runtime import ort_session, quiet_onnxruntime
from onnxflow.stages import Source

logger = logging.getLogger(__name__)
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR


def resolve_input_shapes(
    inputs: list[gs.Variable], given: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """Concrete shape of each graph input: declared dims, batch 1, or the user's shape."""
    names = {t.name for t in inputs}
    for name in given:
        if name not in names:
            raise OnnxflowError(
                "{opt} names {name!r}, but the model's inputs are {inputs}",
                opt=Opt("input_shapes"),
                name=name,
                inputs=sorted(names),
            )
    shapes: dict[str, tuple[int, ...]] = {}
    for t in inputs:
        declared = t.shape
        if declared is None:
            if t.name not in given:
                raise OnnxflowError(
                    "input {name!r} has no declared shape; give its shape in {opt}",
                    name=t.name,
                    opt=Opt("input_shapes"),
                )
            shapes[t.name] = given[t.name]
            continue
        if t.name in given:
            shape = given[t.name]
            if len(shape) != len(declared):
                raise OnnxflowError(
                    "{opt} for {name!r} has rank {rank}, but the input has rank {declared}",
                    opt=Opt("input_shapes"),
                    name=t.name,
                    rank=len(shape),
                    declared=len(declared),
                )
            for i, (want, have) in enumerate(zip(shape, declared, strict=True)):
                if isinstance(have, int) and have > 0 and have != want:
                    raise OnnxflowError(
                        "{opt} for {name!r}: dimension {i} is fixed to {have} in the model, "
                        "not {want}",
                        opt=Opt("input_shapes"),
                        name=t.name,
                        i=i,
                        have=have,
                        want=want,
                    )
            shapes[t.name] = shape
            continue
        dims = []
        for i, d in enumerate(declared):
            if isinstance(d, int) and d > 0:
                dims.append(d)
            elif i == 0:
                dims.append(1)
            else:
                label = f" ({d!r})" if isinstance(d, str) and d else ""
                hint = tuple(
                    x if isinstance(x, int) and x > 0 else (1 if j == 0 else "?")
                    for j, x in enumerate(declared)
                )
                raise OnnxflowError(
                    "input {name!r} dimension {i}{label} is dynamic; give its size with "
                    "{opt} (each ? replaced by a size)",
                    name=t.name,
                    i=i,
                    label=label,
                    opt=Opt("input_shapes", {t.name: hint}),
                )
        shapes[t.name] = tuple(dims)
    return shapes


# The flow model holds several tensors of each activation's size; one tensor above this is
# refused before anything is allocated.
MAX_TENSOR_BYTES = 4 * 2**30


def check_size(name: str, shape: tuple[int, ...], itemsize: int) -> None:
    """Refuse a tensor whose declared shape would exhaust memory, before allocating it."""
    size = math.prod(shape) * itemsize
    if size > MAX_TENSOR_BYTES:
        raise OnnxflowError(
            f"tensor {name!r} of shape {list(shape)} would need {size / 2**30:.1f} GiB "
            f"(limit {MAX_TENSOR_BYTES / 2**30:.0f} GiB per tensor); refused"
        )


def _infer_shapes(graph: gs.Graph) -> None:
    """Fill in shape and dtype of every variable, with ORT where shape inference falls short."""
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = min(model.ir_version, 10)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # noqa: BLE001 - inference is best effort; ORT below is the fallback
        logger.debug("shape inference failed: %s", e)
        inferred = model
    known: dict[str, tuple[tuple[int, ...], int]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if all(d is not None for d in dims):
            known[vi.name] = (tuple(int(d) for d in dims if d is not None), tt.elem_type)
    for name, (shape, elem) in known.items():
        check_size(name, shape, onnx.helper.tensor_dtype_to_np_dtype(elem).itemsize if elem else 4)
    tensors = graph.tensors()
    missing = [
        name
        for name, t in tensors.items()
        if isinstance(t, gs.Variable) and name not in known and t.inputs
    ]
    if missing:
        known.update(_shapes_from_runtime(model, graph, missing))
    for name, t in tensors.items():
        if isinstance(t, gs.Variable) and name in known:
            shape, elem = known[name]
            t.shape = list(shape)
            t.dtype = onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else t.dtype


def _shapes_from_runtime(
    model: onnx.ModelProto, graph: gs.Graph, names: list[str]
) -> dict[str, tuple[tuple[int, ...], int]]:
    """Run the model once on ones and read the shapes of `names` off the results."""
    del model.graph.output[:]
    for n in names:
        model.graph.output.append(onnx.ValueInfoProto(name=n))
    try:
        sess = ort_session(model.SerializeToString(), "cpu")
        feeds = {t.name: np.ones(t.shape, dtype=t.dtype) for t in graph.inputs}
        values = sess.run(names, feeds)
    except Exception as e:  # noqa: BLE001 - any ORT failure means the model cannot run
        raise OnnxflowError(f"onnxruntime cannot run the model: {one_line(e)}") from None
    out: dict[str, tuple[tuple[int, ...], int]] = {}
    for n, v in zip(names, values, strict=True):
        arr = np.asarray(v)
        out[n] = (arr.shape, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype))
    return out


def import_graph(source: Source) -> gs.Graph:
    """The analysis copy of a loaded model's graph; `source.model` is not modified. Large
    weights still in external files are read on demand."""
    graph = gs.import_onnx(source.model)
    attach(graph, source.base_dir)
    # IR < 4 lists initializers as graph inputs too; they are not inputs to feed.
    graph.inputs = [t for t in graph.inputs if isinstance(t, gs.Variable)]
    return graph


class NormalizePass(GraphPass):
    """Give the analysis graph static shapes (inputs from `input_shapes`, a free batch
    dimension 1) and fold its constant subgraphs, inlining the `If`s folding decides and
    cutting data-dependent selections out of the flow."""

    name = "normalize"
    in_place = True

    def __init__(self, input_shapes: dict[str, tuple[int, ...]], stored: set[str]) -> None:
        self.input_shapes = input_shapes
        self.stored = stored
        """Names of the tensors the model stores (computed weights are told apart)."""

    def call(self, graph: gs.Graph) -> PassResult:
        shapes = resolve_input_shapes(graph.inputs, self.input_shapes)
        for t in graph.inputs:
            t.shape = list(shapes[t.name])
            if t.dtype is None:
                raise OnnxflowError(f"input {t.name!r} has no element type")
            check_size(t.name, shapes[t.name], np.dtype(t.dtype).itemsize)
        _name_nodes(graph)
        _infer_shapes(graph)  # static shapes let folding evaluate Shape ops of activations
        views = weight_view_nodes(graph) - computed_weight_views(graph)
        quiet_onnxruntime()  # folding runs its own onnxruntime session
        fold = dict(fold_shapes=True, error_ok=True, flatten_subgraphs=False)
        graph.fold_constants(**fold, should_exclude_node=lambda n: n.name in views)
        while InlineIfPass()(graph).modified:  # the branch taken may fold further
            graph.fold_constants(**fold, should_exclude_node=lambda n: n.name in views)
        graph.cleanup(remove_unused_graph_inputs=False)
        graph.toposort()
        check_produced(graph)
        notes = list(CutSelectionPass(self.stored)(graph).notes)
        for note in (
            computed_weights_note(graph, self.stored),
            constant_factors_note(graph),
        ):
            if note is not None:
                notes.append(note)
        refuse_control_flow(graph, activations(graph))
        # Static shapes found before folding still hold; inlined branches may bring tensors
        # without one. Infer again only if some tensor lacks one.
        if not all(_static(t) for t in graph.tensors().values() if isinstance(t, gs.Variable)):
            _infer_shapes(graph)
        return PassResult(graph, modified=True, notes=tuple(notes))


def check_produced(graph: gs.Graph) -> None:
    """Every tensor a node reads is a graph input, a constant or an earlier node's output.

    A rewrite that breaks this (graph-surgeon's own `If` flattening did) would otherwise
    surface as an onnxruntime error that blames the model, or as an internal error; this
    names the node instead."""
    seen = {t.name for t in graph.inputs}
    for node in graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Variable) and t.name and t.name not in seen:
                raise OnnxflowError(
                    f"node {node.name!r} ({node.op}) reads {t.name!r}, which no node produces "
                    "after constant folding; onnxflow cannot analyse this graph"
                )
        seen.update(t.name for t in node.outputs)


def _static(t: gs.Variable) -> bool:
    return t.shape is not None and all(isinstance(d, int) and d >= 0 for d in t.shape)


def _name_nodes(graph: gs.Graph) -> None:
    """Give unnamed or duplicate-named nodes unique names (names key the weight layers).

    Only the analysis graph is renamed; the pruned model keeps the original nodes.
    """
    seen: set[str] = set()
    for i, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            name = f"{node.name or node.op}_{i}"
            while name in seen:
                name += "_"
            node.name = name
        seen.add(node.name)
