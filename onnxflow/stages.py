"""The typed results that pass from one stage of pruning to the next.

analysis (normalized graph, weight DAG, source model) -> selection (masks, scores, R)
-> materialization (the output model and how it is stored). This module holds the types
only; the stages that produce them live beside their parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Selection:
    """What a pruning loop chose: the masks, and what the dense network's scores were."""

    masks: dict[str, np.ndarray]
    """Boolean keep-masks by weight initializer name, shaped like the weight."""
    log_scores: dict[str, np.ndarray]
    """Dense-network scores as float64 natural logs (-inf where 0); empty if not kept."""
    log_flow: float
    """Natural log of R, the synaptic flow of the dense network."""
    provider: str
    """The onnxruntime execution provider the scores were computed with."""
    pattern_skipped: list[str] = field(default_factory=list)
    """Layers the N:M pattern could not be applied to."""
