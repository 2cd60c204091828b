"""Run the flow model: masked |W| in, SynFlow scores out (float32 values, float64 log-units)."""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort

from onnxflow.dag import WeightDag
from onnxflow.errors import OnnxflowError, one_line
from onnxflow.external import constant_array
from onnxflow.flow.model import JOIN_RANGE, build_flow_model
from onnxflow.flow.registry import RuleRegistry
from onnxflow.parallel import each, pieces, runs, scratch
from onnxflow.runtime import ort_session
from onnxflow.scores import FlowScores, raise_non_finite

__all__ = ["ARENA_MAX_BYTES", "FlowEngine", "FlowScores", "raise_non_finite"]

logger = logging.getLogger(__name__)


# Above this much weight memory, the flow session runs without onnxruntime's CPU arena.
ARENA_MAX_BYTES = 256 << 20
# `FlowEngine.prune` compares masks in pieces of this many weights (a scratch of that size).
_PIECE = 1 << 18


class FlowEngine:
    """One onnxruntime session of the flow model, fed |W| * mask of every prunable weight."""

    def __init__(
        self, graph: gs.Graph, dag: WeightDag, provider: str, rules: RuleRegistry | None = None
    ) -> None:
        self.flow = build_flow_model(graph, dag, rules)
        self.dag = dag
        try:
            self.session = ort_session(
                self.flow.model.SerializeToString(),
                provider,
                arena=sum(layer.size for layer in dag.layers) * 4 < ARENA_MAX_BYTES,
            )
        except Exception as e:  # noqa: BLE001 - ORT raises many types; all mean "cannot run"
            raise OnnxflowError(f"onnxruntime cannot run the flow model: {one_line(e)}") from None
        self._tensors = graph.tensors()
        self.weights = {layer.name: self.magnitude(layer.name) for layer in dag.layers}
        """The flow model's weight inputs: |W| times any factor folded into the weight
        (`FlowModel.weight_factors`), pruned entries zero (updated in place by `prune`)."""
        for name, factor in self.flow.weight_factors.items():
            np.multiply(self.weights[name], factor, out=self.weights[name])
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._results = self._bind_buffers()

    def magnitude(self, name: str) -> np.ndarray:
        """|W| of prunable weight `name` as stored in the model, unpruned (a new array)."""
        return np.abs(constant_array(self._tensors[name]), dtype=np.float32)

    def _bind_buffers(self) -> dict[str, np.ndarray]:
        """Bind the weights and preallocated output buffers once: each run then writes its
        scores in place, with no per-run allocation or copy of N floats."""
        shapes = {
            score: layer.shape
            for layer in self.dag.layers
            if (score := self.flow.scores.get(layer.name, ("",))[0])
        }
        results = {
            name: np.empty(shapes[name], np.float32)
            if name in shapes
            else np.empty(self.flow.unit_shapes.get(name, ()), np.float64)
            for name in self._outputs
        }
        io = self.session.io_binding()
        for name, w in self.weights.items():
            io.bind_ortvalue_input(
                self.flow.weight_inputs[name], ort.OrtValue.ortvalue_from_numpy(w)
            )
        for name, buf in results.items():
            io.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(buf))
        self._io = io
        return results

    def prune(
        self, masks: dict[str, np.ndarray], before: dict[str, np.ndarray] | None = None
    ) -> None:
        """Zero the weights whose mask is False, for every later run.

        `before`: the masks of the last prune, which the caller may pass when they differ
        in few weights (late in a schedule a step drops a few thousand of millions): then
        only those are zeroed, found by comparing the two byte masks piece by piece (a
        quarter of what multiplying every weight by its mask reads and writes), one layer
        after the other (two threads on that comparison were slower).

        Without `before`, every weight is multiplied by its mask in pieces, each piece's
        booleans first copied into a float32 scratch of its thread: numpy's multiply of
        float32 by bool casts through small internal buffers, which cost more than the copy.
        The pieces go to the cores in contiguous runs (`parallel.runs`). The product is the
        same, weight by weight (w * 1.0 and w * 0.0, signed zeros included)."""
        names = list(self.weights)
        cuts = pieces([self.weights[n].size for n in names], _PIECE)
        if before is None:

            def multiply(piece: tuple[int, int, int]) -> None:
                i, start, stop = piece
                part = self.weights[names[i]].reshape(-1)[start:stop]
                factor = scratch("mask", (_PIECE,), np.float32)[: stop - start]
                np.copyto(factor, masks[names[i]].reshape(-1)[start:stop])
                np.multiply(part, factor, out=part)

            runs(multiply, cuts, [stop - start for _, start, stop in cuts])
            return
        changed = scratch("changed", (_PIECE,), bool)
        for i, start, stop in cuts:
            n = names[i]
            now, then = masks[n].reshape(-1)[start:stop], before[n].reshape(-1)[start:stop]
            lost = np.not_equal(then, now, out=changed[: stop - start])
            self.weights[n].reshape(-1)[start:stop][lost.nonzero()[0]] = 0

    def flow_with_unit_weights(self) -> float:
        """log R of the network with every prunable weight set to 1 (the weights restored
        after): -inf when no path carries flow whatever the weights are."""
        saved = {name: w.copy() for name, w in self.weights.items()}
        try:
            for w in self.weights.values():
                w.fill(1.0)  # in place: the session reads these bound buffers
            return self.run(check=False).log_flow
        finally:
            for name, w in self.weights.items():
                np.copyto(w, saved[name])

    def restore(self, masks: dict[str, np.ndarray], names: list[str]) -> None:
        """Set the weights `names` back to |W| * factor * mask (undoing a `prune`), in the
        buffers the session is bound to."""
        for name in names:
            w = self.weights[name]
            np.copyto(w, self.magnitude(name))
            if name in self.flow.weight_factors:
                np.multiply(w, self.flow.weight_factors[name], out=w)
            np.multiply(w, masks[name], out=w)

    def run(self, *, check: bool = True) -> FlowScores:
        """Scores of the current (masked) network. The returned arrays are buffers that the
        next run overwrites.

        Every score is checked to be finite unless `check` is False (a pass over all N
        scores, which the pruning loop makes on the dense network only); the log-units and
        R are always checked."""
        try:
            self.session.run_with_iobinding(self._io)
        except Exception as e:  # noqa: BLE001 - e.g. a shape the model declares but breaks
            raise OnnxflowError(
                f"onnxruntime failed running the flow model: {one_line(e)}"
            ) from None
        results = self._results

        def unit(name: str | None) -> float:
            u = 0.0 if name is None else float(results[name])
            if np.isnan(u) or u == np.inf:
                raise OnnxflowError("non-finite synaptic flow (a flow's scale is NaN or inf)")
            return u

        def units_of(name: str) -> float | np.ndarray:
            if name not in self.flow.unit_shapes:
                return unit(name)
            u = results[name]
            if np.isnan(u).any() or (u == np.inf).any():
                raise OnnxflowError("non-finite synaptic flow (a flow's scale is NaN or inf)")
            return float(u.max()) if np.isneginf(u).all() else u

        values: dict[str, np.ndarray] = {}
        units: dict[str, float | np.ndarray] = {}
        for layer in self.dag.layers:
            entry = self.flow.scores.get(layer.name)
            u: float | np.ndarray = 0.0
            if entry is not None and entry[1] is not None:
                u = units_of(entry[1])
            if entry is None or (isinstance(u, float) and u == -np.inf):
                values[layer.name] = np.zeros(layer.shape, np.float32)
                units[layer.name] = 0.0
                continue
            values[layer.name] = results[entry[0]]
            units[layer.name] = u
        names = list(values) if check else []
        maxima = each(lambda n: values[n].max(initial=0.0), names)
        for name, mx in zip(names, maxima, strict=True):
            if not np.isfinite(mx):  # NaN and inf propagate through max
                raise_non_finite(name)
        parts = [
            np.log(float(results[t])) + unit(s)
            for t, s in self.flow.output_flows
            if float(results[t]) > 0
        ]
        log_flow = float(np.logaddexp.reduce(parts)) if parts else -np.inf
        gaps = {node: float(results[out]) for node, out in self.flow.joins.items()}
        lossy = {node: gap for node, gap in gaps.items() if gap > JOIN_RANGE}
        return FlowScores(values, units, log_flow, lossy)
