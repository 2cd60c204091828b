"""Run the flow model: masked |W| in, natural-log SynFlow scores out."""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxflow.dag import WeightDag
from onnxflow.errors import OnnxflowError
from onnxflow.flow.model import build_flow_model
from onnxflow.runtime import ort_session

logger = logging.getLogger(__name__)


class FlowEngine:
    """Holds one onnxruntime session of the flow model and the |W| of every prunable weight."""

    def __init__(self, graph: gs.Graph, dag: WeightDag, provider: str) -> None:
        self.flow = build_flow_model(graph, dag)
        self.dag = dag
        try:
            self.session = ort_session(self.flow.model.SerializeToString(), provider)
        except Exception as e:  # noqa: BLE001 - ORT raises many types; all mean "cannot run"
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise OnnxflowError(f"onnxruntime cannot run the flow model: {msg}") from None
        tensors = graph.tensors()
        self.abs_weights = {
            layer.name: np.abs(np.asarray(tensors[layer.name].values, dtype=np.float32))
            for layer in dag.layers
        }
        self._outputs = [o.name for o in self.session.get_outputs()]

    def log_scores(
        self, masks: dict[str, np.ndarray] | None = None
    ) -> tuple[dict[str, np.ndarray], float]:
        """Natural-log scores (float64, -inf where 0) of the masked network, and log R."""
        feeds = {}
        for name, absw in self.abs_weights.items():
            m = None if masks is None else masks[name]
            feeds[self.flow.weight_inputs[name]] = absw if m is None else absw * m
        results = dict(zip(self._outputs, self.session.run(self._outputs, feeds), strict=True))

        def unit(name: str | None) -> float:
            return 0.0 if name is None else float(results[name])

        out: dict[str, np.ndarray] = {}
        for layer in self.dag.layers:
            entry = self.flow.scores.get(layer.name)
            if entry is None:
                out[layer.name] = np.full(layer.shape, -np.inf)
                continue
            score = results[entry[0]]
            if not np.all(np.isfinite(score)):
                raise OnnxflowError(f"non-finite synaptic flow at weight {layer.name!r}")
            with np.errstate(divide="ignore"):
                out[layer.name] = np.log(score, dtype=np.float64) + unit(entry[1])
        parts = [np.log(float(results[t])) + unit(s) for t, s in self.flow.output_flows
                 if float(results[t]) > 0]
        log_r = float(np.logaddexp.reduce(parts)) if parts else -np.inf
        return out, log_r
