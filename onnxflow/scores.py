"""Scores as selection reads them: float32 values and float64 log-units per layer.

A neutral type that the scorers produce and the selector, schedule and constraints read,
so that selection never imports the flow engine. The flow engine's runs add R
(`FlowScores`); the baselines (|W|, random) are plain `Scores` with no R to report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxflow.errors import OnnxflowError


@dataclass
class Scores:
    """Scores of one ranking: the score of weight `w` is `values[w] * exp(units[w])`.

    Within a layer the float32 values rank the weights exactly; across layers the float64
    units put them on one scale, whatever the size of R. A layer that reads channels of
    very different flow (after a Concat) has one unit per input channel: an array of the
    weight's rank that broadcasts to it; there only `log()` (or `rank_keys`) ranks exactly.
    """

    values: dict[str, np.ndarray]
    units: dict[str, float | np.ndarray]

    def log(self) -> dict[str, np.ndarray]:
        """Natural-log scores in float64, -inf where the score is 0."""
        out = {}
        with np.errstate(divide="ignore"):
            for name, v in self.values.items():
                out[name] = np.log(v, dtype=np.float64) + self.units[name]
        return out

    def per_channel(self, name: str) -> bool:
        """Whether layer `name` has one unit per input channel (an array) rather than one."""
        return np.ndim(self.units[name]) > 0


@dataclass
class FlowScores(Scores):
    """SynFlow scores of one flow-model run, with the network's total flow."""

    log_flow: float
    """Natural log of R, the network's total synaptic flow."""
    lossy_joins: dict[str, float] = field(default_factory=dict)
    """Nodes that joined flows more than float32 spans apart into one tensor (name -> gap
    in nats, `FlowModel.joins`): the scores computed from their smaller parts are inexact."""


def raise_non_finite(name: str) -> None:
    raise OnnxflowError(f"non-finite synaptic flow at weight {name!r}")


def lossy_join_note(joins: dict[str, float]) -> str | None:
    """One line on the joins that lost float32 precision, or None if there are none."""
    if not joins:
        return None
    worst = max(joins, key=lambda n: joins[n])
    more = f" and {len(joins) - 1} more" if len(joins) > 1 else ""
    return (
        f"scores may be inexact: {worst!r}{more} joins flows {joins[worst]:.0f} nats apart into "
        "one float32 tensor (beyond its ~87), so the smaller parts lose precision or underflow "
        "to 0, and so do the scores computed from them (typical of a recurrence unrolled over "
        "a sequence, each step a product of the ones before, e.g. a selective scan)"
    )
