"""Scorers: what ranks the weights of the masked network at each iteration.

A scorer is called with the current masks and returns `Scores` that are 0 exactly where
those masks prune, and is told each new set of masks (`prune`). SynFlow rescores the
masked network with the flow engine; the paper's baselines are fixed scores (|W|, or seeded
uniform noise) that the masks zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from onnxflow.scores import FlowScores, Scores

Masks = dict[str, np.ndarray]


class Scorer(Protocol):
    def __call__(self, masks: Masks) -> Scores:
        """Scores of the network under `masks` (the last masks given to `prune`): buffers
        the next call may overwrite."""
        ...

    def prune(self, masks: Masks) -> None:
        """Take `masks` (a subset of the previous ones) as the network's from now on."""
        ...


class FlowRunner(Protocol):
    """What SynFlow needs of the flow engine (`onnxflow.flow.engine.FlowEngine`)."""

    def run(self, *, check: bool = True) -> FlowScores: ...

    def prune(self, masks: Masks, before: Masks | None = None) -> None: ...

    def restore(self, masks: Masks, names: list[str]) -> None: ...


class SynFlowScorer:
    """SynFlow: the flow engine's scores of the masked network, run at most once per set
    of masks (a run made to check a step is the next step's scores)."""

    def __init__(self, engine: FlowRunner, dense: FlowScores, *, check: bool) -> None:
        """`dense`: the engine's run on the unpruned network; `check`: whether later runs
        check every score for finiteness (a pass over N)."""
        self.engine, self.check = engine, check
        self._fresh: FlowScores | None = dense

    def __call__(self, masks: Masks) -> FlowScores:
        return self._fresh if self._fresh is not None else self.run()

    def run(self) -> FlowScores:
        """Score the engine's current network now."""
        self._fresh = self.engine.run(check=self.check)
        return self._fresh

    def prune(self, masks: Masks, before: Masks | None = None) -> None:
        """`before`: the masks the engine was last pruned with, where the caller still
        holds them (the engine then only zeroes what changed)."""
        self.engine.prune(masks, before)
        self._fresh = None

    def restore(self, masks: Masks, names: list[str]) -> None:
        """Undo a `prune` of the layers `names` back to `masks`."""
        self.engine.restore(masks, names)
        self._fresh = None


class FixedScorer:
    """Fixed scores (a baseline's) times the masks, written into buffers allocated once."""

    def __init__(self, values: Mapping[str, np.ndarray]) -> None:
        self.values = dict(values)
        self._out = Scores(
            {n: np.empty_like(v) for n, v in self.values.items()}, dict.fromkeys(self.values, 0.0)
        )

    def __call__(self, masks: Masks) -> Scores:
        for n, v in self.values.items():
            np.multiply(v, masks[n], out=self._out.values[n])
        return self._out

    def prune(self, masks: Masks) -> None:
        """Nothing to do: the masks come with each call."""


def magnitude_scorer(magnitudes: Mapping[str, np.ndarray]) -> FixedScorer:
    """|W| (`magnitudes`: float32 |W| by layer, as stored, unpruned)."""
    return FixedScorer(magnitudes)


def random_scorer(shapes: Mapping[str, tuple[int, ...]], seed: int) -> FixedScorer:
    """Seeded uniform noise in (1e-6, 1 + 1e-6), drawn layer by layer in `shapes`' order."""
    rng = np.random.default_rng(seed)
    return FixedScorer(
        {n: rng.random(s, dtype=np.float32) + np.float32(1e-6) for n, s in shapes.items()}
    )
