"""The materialization stage: from an analysis and the chosen masks to the output model.

It masks the source model's weights (a stored copy of a tied weight takes its layer's mask),
stores them sparsely if asked, measures the result, and decides how it is to be written
(`StoragePlan`): `api.save` follows that plan, the report only describes it.
"""

from __future__ import annotations

import numpy as np

from onnxflow.external import model_bytes
from onnxflow.passes.apply_masks import apply_masks
from onnxflow.passes.sparse_storage import to_sparse_storage
from onnxflow.stages import Analysis, Materialization, StoragePlan

# Models larger than this are written with external data even if the input had none.
EXTERNAL_OVER_BYTES = 1_800_000_000


def materialize(
    analysis: Analysis, masks: dict[str, np.ndarray], *, sparse_storage: bool = False
) -> Materialization:
    """The pruned model: the source model with the masked weights zeroed.

    A model `analysis` loaded from a file is its own (`Source.owned`): it is masked in place,
    which saves a full copy of the weights, and `analysis.model` then is the output. A model
    the caller passed in memory is copied, never modified."""
    source = analysis.source
    full = dict(masks)
    for copy, (name, perm) in analysis.dag.copies.items():
        if name in full:  # a stored copy of a tied weight takes its mask (dag.py)
            full[copy] = full[name].transpose(perm)
    pruned = apply_masks(source.model, full, source.base_dir, in_place=source.owned)
    bytes_dense = model_bytes(pruned)
    bytes_after = bytes_dense
    if sparse_storage:
        to_sparse_storage(pruned, set(masks))
        bytes_after = model_bytes(pruned)
    external = source.external_data or bytes_after > EXTERNAL_OVER_BYTES
    return Materialization(pruned, bytes_dense, bytes_after, StoragePlan(external, sparse_storage))
