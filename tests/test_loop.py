"""The pruning loop (`onnxflow.pruning.loop`): score, constrain, select, on a schedule.

The loop is given its parts, so a test records each step by handing it a recording step
rather than patching the module."""

from __future__ import annotations

import itertools
from pathlib import Path

import netgen
import numpy as np

import onnxflow
from onnxflow.analyze import analyze
from onnxflow.dag import WeightDag, WeightLayer
from onnxflow.flow.engine import FlowEngine
from onnxflow.options import PruneOptions
from onnxflow.pruning.constraints import NMPattern
from onnxflow.pruning.loop import PlainStep, Step, prune_loop
from onnxflow.pruning.refiner import Refiner
from onnxflow.pruning.schedule import kept_counts
from onnxflow.pruning.scorers import FixedScorer, SynFlowScorer
from onnxflow.pruning.selector import Selector
from onnxflow.scores import Scores

Masks = dict[str, np.ndarray]


class Recording:
    """A step that records the masks after each call of the step it wraps."""

    def __init__(self, step: Step) -> None:
        self.step, self.rounds, self.scored = step, [], []

    def __call__(self, scores: Scores, masks: Masks, kept: int, k: int) -> Masks:
        self.scored.append((kept, k))
        masks = self.step(scores, masks, kept, k)
        self.rounds.append({n: m.copy() for n, m in masks.items()})
        return masks


def kept(masks: Masks) -> int:
    return sum(int(m.sum()) for m in masks.values())


def test_pruned_weights_stay_pruned() -> None:
    """SynFlow on a CIFAR ResNet-8, global (refined) and local: each round's masks are a
    subset of the round before, the counts follow the schedule, and the loop built from
    its parts here gives `onnxflow.prune`'s masks."""
    model = netgen.cifar_resnet(8, seed=3)
    for scope in ("global", "local"):
        opts = PruneOptions(sparsity=0.98, iterations=10, scope=scope)  # type: ignore[arg-type]
        analysis = analyze(model)
        dag = analysis.dag
        engine = FlowEngine(analysis.graph, dag, "cpu")
        dense = engine.run(check=True)
        scorer = SynFlowScorer(engine, dense, check=scope != "global")
        masks = {x.name: np.ones(x.shape, bool) for x in dag.layers}
        select = Selector([x.name for x in dag.layers], [x.size for x in dag.layers], scope)
        inner: Step = (
            Refiner(scorer, select, masks, dense)
            if scope == "global"
            else PlainStep(select, scorer, exact_zeros=True)
        )
        step = Recording(inner)
        counts = kept_counts(dag.size, round(0.02 * dag.size), 10, "exponential")
        final = prune_loop(masks, counts, scorer, step)
        assert len(step.rounds) == 10
        assert [kept(r) for r in step.rounds] == counts
        for prev, cur in itertools.pairwise(step.rounds):
            for name in cur:
                assert not (cur[name] & ~prev[name]).any(), f"{scope}: {name} regrew weights"
        api = onnxflow.prune(model, opts, keep_scores=False)
        assert all(np.array_equal(final[n], api.masks[n]) for n in api.masks), scope


def test_fixed_scores_prune_the_lowest_first() -> None:
    """|W|-like fixed scores: a global loop removes weights in score order, one step after
    the other, whatever the split of the schedule."""
    values = {"a": np.array([6, 1, 4], np.float32), "b": np.array([5, 2, 3, 7], np.float32)}
    for counts in ([5, 3, 1], [1], [6, 4, 2, 1]):
        scorer = FixedScorer(values)
        step = Recording(PlainStep(Selector(["a", "b"], [3, 4]), scorer, exact_zeros=True))
        start = {n: np.ones(v.shape, bool) for n, v in values.items()}
        masks = prune_loop(start, counts, scorer, step)
        assert [kept(r) for r in step.rounds] == counts
        top = sorted(((v, n, i) for n in values for i, v in enumerate(values[n])), reverse=True)
        want = {(n, i) for _, n, i in top[: counts[-1]]}
        assert {(n, i) for n in masks for i in np.flatnonzero(masks[n])} == want


def test_a_plain_step_writes_beside_the_masks_it_starts_from() -> None:
    """A step leaves the masks it was given as they were and writes into a second set of
    buffers; the next step writes into the first step's masks (no N-byte array allocated
    per step), and the results are those of selecting over fresh copies."""
    values = {"a": np.array([6, 1, 4, 9], np.float32), "b": np.array([5, 2, 3, 7], np.float32)}
    scorer = FixedScorer(values)
    step = PlainStep(Selector(["a", "b"], [4, 4]), scorer, exact_zeros=True)
    start = {n: np.ones(4, bool) for n in values}
    first = step(scorer(start), start, 8, 5)
    assert all(m.all() for m in start.values())  # untouched
    assert {n: m.tolist() for n, m in first.items()} == {
        "a": [True, False, True, True],
        "b": [True, False, False, True],
    }
    second = step(scorer(first), first, 5, 2)
    assert all(np.shares_memory(second[n], start[n]) for n in values)
    assert second["a"].tolist() == second["b"].tolist() == [False, False, False, True]  # 9, 7
    assert first["a"].tolist() == [True, False, True, True]  # untouched in turn


def test_steps_that_keep_no_fewer_weights_are_skipped() -> None:
    """min_kept can keep more than k: a later count still above it is no step at all."""
    values = {"a": np.array([6, 1, 4], np.float32), "b": np.array([5, 2, 3, 7], np.float32)}
    scorer = FixedScorer(values)
    select = Selector(["a", "b"], [3, 4], min_kept=2)
    step = Recording(PlainStep(select, scorer, exact_zeros=True))
    progress: list[tuple[int, int]] = []
    masks = {n: np.ones(3 if n == "a" else 4, bool) for n in values}
    out = prune_loop(
        masks,
        [5, 3, 4, 2],
        scorer,
        step,
        exact_count=True,
        progress=lambda done, total: progress.append((done, total)),
    )
    # 5 kept; 3 asks for fewer but min_kept keeps 2 + 2; 4 then asks no fewer (skipped); 2 does.
    assert step.scored == [(7, 5), (5, 3), (4, 2)]
    assert kept(out) == 4 and progress == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_a_pattern_alone_sets_each_steps_count() -> None:
    """With a pattern and no sparsity, each step keeps all that the pattern's limit leaves."""
    layer = WeightLayer("a", "MatMul", ["m"], (2, 8), in_axis=1)
    pattern = NMPattern((1, 4), WeightDag([layer]), alone=True)
    values = {"a": np.arange(16, dtype=np.float32).reshape(2, 8) + 1}
    scorer = FixedScorer(values)
    step = Recording(PlainStep(Selector(["a"], [16]), scorer, exact_zeros=False))
    out = prune_loop(
        {"a": np.ones((2, 8), bool)}, [16, 16, 4], scorer, step, pattern=pattern, exact_count=True
    )
    assert [kept(r) for r in step.rounds] == [12, 8, 4]
    assert out["a"].tolist() == [[False, False, False, True] * 2] * 2  # each group's best


def test_selection_does_not_import_the_flow_engine() -> None:
    """Selector, schedule, constraints, the loop and the top-k they use read the neutral
    `Scores`: none of them imports the flow engine or onnxruntime."""
    import ast
    import importlib

    selection = ["selector", "schedule", "constraints", "loop"]
    for name in [f"pruning.{n}" for n in selection] + ["masks", "scores"]:
        path = importlib.import_module(f"onnxflow.{name}").__file__
        assert path is not None
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
        imported = [
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        ]
        assert imported, name
        bad = [m for m in imported if m and m.startswith(("onnxflow.flow", "onnxruntime"))]
        assert not bad, f"onnxflow.{name} imports {bad}"
