"""What channel mode reports: real sizes before and after, frozen groups, latency.

Unlike weight mode's "FLOPs kept with a sparse kernel", these are the compact model's own
figures: it is a smaller dense model. The per-layer figures are the shared presentation model
(`onnxflow.rows`: a `LayerRow` per weight layer, kept = the weights left in the compact
model, `Totals` for the sums), so weights and FLOPs are computed where weight mode computes
them.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import onnx
from onnx import helper

from onnxflow.channels.groups import ChannelGroups
from onnxflow.rows import LayerRow, Totals

if TYPE_CHECKING:
    from onnxflow.channels.score import Selection

SCHEMA_VERSION = 1


class ChannelReport(NamedTuple):
    groups: int
    prunable_groups: int
    removed_groups: int
    frozen: dict[str, int]
    """Frozen groups counted by reason."""
    layers: list[LayerRow]
    """One row per weight layer (Conv, ConvTranspose, Gemm, MatMul): its weights before and
    kept in the compact model; `weights`, `flops_*` are their `Totals`."""
    prunable_weights: int
    """Weights in the slices of prunable groups: the base of the sparsity."""
    params_before: int
    """Float parameters stored in the model (weights, biases, normalization, constants)."""
    params_after: int
    bytes_before: int
    bytes_after: int
    log_flow: float | None
    """log R of the dense network (SynFlow only)."""
    log_flow_after: float | None
    """log R of the network with the removed groups' slices masked."""
    max_relative_difference: float
    """Largest output difference compact vs masked original (relative to the output scale)."""
    latency_before_ms: float | None
    latency_after_ms: float | None
    seconds: float
    options: dict[str, Any] | None = None

    @property
    def totals(self) -> Totals:
        return Totals.of(self.layers)

    @property
    def weights(self) -> int:
        """Weights of the weight layers."""
        return self.totals.params

    @property
    def weights_after(self) -> int:
        return self.totals.kept

    @property
    def flops_before(self) -> int:
        return self.totals.flops

    @property
    def flops_after(self) -> int:
        """The compact model's FLOPs (its weights are all there is: no sparse kernel)."""
        return self.totals.flops_kept

    @property
    def removed_share(self) -> float:
        """Fraction of the prunable weights removed."""
        return (
            1 - self.weights_after_prunable / self.prunable_weights
            if self.prunable_weights
            else 0.0
        )

    @property
    def weights_after_prunable(self) -> int:
        return self.prunable_weights - (self.weights - self.weights_after)

    @property
    def speedup(self) -> float | None:
        if self.latency_before_ms is None or not self.latency_after_ms:
            return None
        return self.latency_before_ms / self.latency_after_ms

    def to_dict(self) -> dict[str, Any]:
        d = self._asdict()
        totals = self.totals
        d["layers"] = [row.report_dict() for row in self.layers]
        d["schema_version"] = SCHEMA_VERSION
        d["granularity"] = "channel"
        d["weights"] = totals.params
        d["weights_after"] = totals.kept
        d["flops_before"] = totals.flops
        d["flops_after"] = totals.flops_kept
        d["removed_share"] = self.removed_share
        d["speedup"] = self.speedup
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False, default=_finite)


def _finite(x: object) -> object:
    raise TypeError(f"not JSON: {x!r}")


def params_of(model: onnx.ModelProto) -> int:
    """Float values the model stores (initializers and Constant nodes)."""
    tensors = list(model.graph.initializer)
    tensors += [
        a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.t.dims
    ]
    total = 0
    for t in tensors:
        if np.issubdtype(helper.tensor_dtype_to_np_dtype(t.data_type), np.floating):
            total += math.prod(t.dims)
    return total


def groups_json(
    cg: ChannelGroups, sel: Selection, kept: dict[str, dict[int, list[int]]]
) -> dict[str, Any]:
    """`--channels`: every group with members, size, score and fate; kept indices."""
    from onnxflow.channels.score import group_weights

    sizes = group_weights(cg)
    groups = []
    for g in cg.groups:
        score = float(sel.scores[g.id])
        groups.append(
            {
                "id": g.id,
                "home": g.home,
                "prunable": g.prunable,
                "frozen": g.frozen,
                "removed": g.id in sel.removed,
                "weights": int(sizes[g.id]),
                "log_score": score if math.isfinite(score) else None,
                "members": [
                    {"tensor": s.tensor, "axis": s.axis, "kind": s.kind, "index": s.index.tolist()}
                    for s in g.slices
                ],
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "groups": groups,
        "kept": {name: {str(a): idx for a, idx in axes.items()} for name, axes in kept.items()},
    }


def measure_latency(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    shapes: dict[str, tuple[int, ...]],
    *,
    runs: int = 20,
    warmup: int = 3,
) -> tuple[float, float]:
    """Median onnxruntime CPU latency (ms) of both models, runs alternated so that load on
    the machine hits both alike."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    inits = {t.name for t in before.graph.initializer}
    feeds = {}
    for vi in before.graph.input:
        if vi.name in inits:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = rng.standard_normal(shapes[vi.name]).astype(dtype)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    sessions = [
        ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for m in (before, after)
    ]
    for _ in range(warmup):
        for s in sessions:
            s.run(None, feeds)
    times: list[list[float]] = [[], []]
    for _ in range(runs):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[i].append((time.perf_counter() - t0) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])
