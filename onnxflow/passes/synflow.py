"""select(): iterative SynFlow pruning (Tanaka et al. 2020, algorithm 1), or one of the
paper's baselines (magnitude, random) through the same schedule and selection.

Scores are recomputed on the masked network at every step, and the kept count follows the
schedule down to exactly round(density * N). The first step's scores are those of the dense
network and are kept for `--scores`. The loop's parts live in `onnxflow.pruning`; `select`
picks them from the options.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxflow.dag import WeightDag
from onnxflow.errors import OnnxflowError
from onnxflow.flow.engine import FlowEngine
from onnxflow.flow.registry import RuleRegistry
from onnxflow.options import PruneOptions
from onnxflow.pruning.constraints import NMPattern
from onnxflow.pruning.loop import PlainStep, Step, prune_loop
from onnxflow.pruning.refiner import REFINE_MAX, Refiner
from onnxflow.pruning.schedule import density_target, kept_counts
from onnxflow.pruning.scorers import Scorer, SynFlowScorer, magnitude_scorer, random_scorer
from onnxflow.pruning.selector import Selector
from onnxflow.runtime import resolve_provider
from onnxflow.scores import lossy_join_note
from onnxflow.stages import ProgressCallback, Selection


def select(
    graph: gs.Graph,
    dag: WeightDag,
    opts: PruneOptions,
    *,
    rules: RuleRegistry | None = None,
    progress: ProgressCallback | None = None,
    keep_scores: bool = True,
) -> Selection:
    """Run the pruning loop on an analyzed graph: the masks it keeps, and the dense scores."""
    pattern = NMPattern(opts.pattern, dag, alone=opts.sparsity is None) if opts.pattern else None
    if pattern is not None:
        target = pattern.target(opts.sparsity, dag.size)
    else:
        target = density_target(opts.sparsity, opts.density, dag.size)
    provider = resolve_provider(opts.provider)
    engine = FlowEngine(graph, dag, provider, rules)
    dense = engine.run(check=True)
    if dense.log_flow == -np.inf:
        raise OnnxflowError(no_flow_message(engine))
    masks = {layer.name: np.ones(layer.shape, dtype=bool) for layer in dag.layers}
    scorer: Scorer
    if opts.method == "synflow":
        scorer = SynFlowScorer(engine, dense, check=opts.scope != "global")
    elif opts.method == "magnitude":
        scorer = magnitude_scorer({n: engine.magnitude(n) for n in engine.weights})
    else:
        scorer = random_scorer({layer.name: layer.shape for layer in dag.layers}, opts.seed)
    log_scores = scorer(masks).log() if keep_scores else {}
    names, sizes = [x.name for x in dag.layers], [x.size for x in dag.layers]
    selector = Selector(names, sizes, opts.scope, opts.min_kept)
    # Scores are 0 exactly where the scorer's masks prune, unless a pattern restricts the
    # masks after scoring (selection must then zero them itself).
    exact_zeros = pattern is None
    step: Step = PlainStep(selector, scorer, exact_zeros=exact_zeros)
    # One-shot (a single iteration) stays the paper's one-shot baseline, unrefined.
    # Local scope keeps each layer's share by construction: nothing to refine there.
    refine = opts.iterations > 1 and opts.scope == "global" and dag.size <= REFINE_MAX
    if isinstance(scorer, SynFlowScorer) and exact_zeros and refine:
        step = Refiner(scorer, selector, masks, dense)
    counts = kept_counts(dag.size, target, opts.iterations, opts.schedule)
    masks = prune_loop(
        masks,
        counts,
        scorer,
        step,
        pattern=pattern,
        exact_count=bool(opts.min_kept) or pattern is not None,
        progress=progress,
    )
    skipped = pattern.skipped if pattern is not None else []
    note = lossy_join_note(dense.lossy_joins) if opts.method == "synflow" else None
    notes = [note] if note else []
    return Selection(masks, log_scores, dense.log_flow, provider, skipped, notes)


def no_flow_message(engine: FlowEngine) -> str:
    """Why R = 0: zero weights on every path (R with unit weights is positive), or no path
    from where flow enters to an output at all (e.g. the outputs read only constants).
    Shared by the pruning loop, `api.score` and channel mode, so all three say the same."""
    cause = (
        "every input-output path crosses a zero weight"
        if engine.flow_with_unit_weights() > -np.inf
        else "no input-output path carries flow whatever the weights are (the outputs reach "
        "the inputs and learned tokens only through constants: a zero factor, a selection "
        "that picks a constant)"
    )
    return f"the network carries no synaptic flow (R = 0): {cause}, so there is nothing to rank"
