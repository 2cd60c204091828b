"""The selector: from scores and a count k to masks, globally or per layer.

`global` keeps the k best scores over all layers (exact top-k, `masks.select_global`);
`local` keeps each layer's share of k (`masks.select_local`). Reserved weights (`min_kept`,
and the refiner's protected ones) are kept first and count in k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxflow.masks import select_global, select_local
from onnxflow.pruning.constraints import reserved
from onnxflow.scores import Scores


@dataclass(frozen=True)
class Selector:
    """Selects over the layers `names` (network order: ties go to the earlier weight)."""

    names: Sequence[str]
    sizes: Sequence[int]
    scope: str = "global"
    min_kept: int = 0

    def __call__(
        self,
        scores: Scores,
        masks: dict[str, np.ndarray],
        k: int,
        protect: dict[str, np.ndarray] | None = None,
        *,
        exact_zeros: bool = False,
        out: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """The masks keeping k weights (a subset of `masks`, as pruned weights are never
        selected again), written into `out` when it is given (a buffer per layer, none of
        them one of `masks`), leaving `masks` as they were; else over `masks`.
        `exact_zeros`: the scores are 0 exactly where `masks` prune (selection may then
        skip zeroing them)."""
        names = self.names
        if protect and not self.min_kept and self.scope == "global":
            # Protected weights leave the selection: their scores (buffers a scorer
            # rewrites, used once) are zeroed where `rest` prunes them, so zeros stay exact.
            rest = dict(masks)
            for n, m in protect.items():
                rest[n] = masks[n] & ~m
                np.multiply(scores.values[n], ~m, out=scores.values[n])
            k_rest = max(
                0, k - sum(int(np.count_nonzero(m & masks[n])) for n, m in protect.items())
            )
            masks = select_global(names, scores, rest, k_rest, zeroed=exact_zeros, out=out)
            for n, m in protect.items():
                masks[n] |= m
            return masks
        first = reserved(names, scores, masks, self.min_kept, protect)
        rest = {n: masks[n] & ~first[n] for n in first} or masks
        k_rest = max(0, k - sum(int(np.count_nonzero(r)) for r in first.values()))
        if self.scope == "global":
            zeroed = rest is masks and exact_zeros
            masks = select_global(names, scores, rest, k_rest, zeroed=zeroed, out=out)
        else:
            masks = select_local(names, scores, rest, k_rest, self.sizes)
            if out is not None:
                for n in names:
                    np.copyto(out[n], masks[n])
                masks = {n: out[n] for n in names}
        for n, f in first.items():
            masks[n] |= f
        return masks
