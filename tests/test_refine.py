"""Refined steps at the edge of compression: no layer emptied, R > 0, counts as scheduled.

A step of the schedule can remove a layer's last few weights at once when they tie at the
lowest score, or cut the last paths, although removing them one at a time with a rescoring
in between would not (Tanaka et al.'s theorem 3 assumes small steps). The pruning loop
(`select`) splits such steps in halves down to single weights.
"""

from __future__ import annotations

import itertools

import netgen
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxflow
from onnxflow.pruning.refiner import Refiner
from onnxflow.pruning.scorers import SynFlowScorer
from onnxflow.pruning.selector import Selector
from onnxflow.scores import FlowScores


def chain(widths: list[int]) -> onnx.ModelProto:
    """An MLP of MatMuls with all-ones weights: every weight of a layer ties."""
    inits, nodes, x = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        inits.append(numpy_helper.from_array(np.ones((a, b), np.float32), f"w{i}"))
        y = "y" if i == len(widths) - 2 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [y]))
        x = y
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, widths[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, widths[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_step_that_would_empty_a_layer_of_tied_weights_is_split() -> None:
    """1 -> 4 -> 1, all ones: 8 weights scoring R/4 each. The first of two steps keeps 4:
    by position the 4 of w0, emptying w1 (R = 0). Split and rescored, one path remains."""
    model = chain([1, 4, 1])
    result = onnxflow.prune(model, sparsity=0.75, iterations=2)
    masks = result.masks
    assert sum(int(m.sum()) for m in masks.values()) == 2
    assert masks["w0"].sum() == 1 and masks["w1"].sum() == 1
    assert np.isfinite(onnxflow.score(result.model).log_flow)
    # the kept weights form a path
    assert np.flatnonzero(masks["w0"][0]) == np.flatnonzero(masks["w1"][:, 0])
    # one-shot pruning stays the paper's one-shot: it collapses here
    assert onnxflow.prune(model, sparsity=0.75, iterations=1).report.emptied == ["w1"]


class _PathEngine:
    """A stand-in flow engine on two layers a (3 weights) and b (2), whose paths are
    (a0, b0), (a1, b0), (a2, b1) with flows 1, 1, 1.5: a weight's score is the flow of the
    live paths through it, as SynFlow's is."""

    paths = ((0, 0, 1.0), (1, 0, 1.0), (2, 1, 1.5))

    def __init__(self) -> None:
        self.masks = {"a": np.ones(3, bool), "b": np.ones(2, bool)}
        self.runs = 0

    def prune(
        self, masks: dict[str, np.ndarray], before: dict[str, np.ndarray] | None = None
    ) -> None:
        for n in self.masks:
            self.masks[n] &= masks[n]

    def restore(self, masks: dict[str, np.ndarray], names: list[str]) -> None:
        for n in names:
            self.masks[n] = masks[n].copy()

    def run(self, *, check: bool = True) -> FlowScores:
        self.runs += 1
        a, b = np.zeros(3, np.float32), np.zeros(2, np.float32)
        for i, j, v in self.paths:
            if self.masks["a"][i] and self.masks["b"][j]:
                a[i] += v
                b[j] += v
        r = float(a.sum())
        return FlowScores({"a": a, "b": b}, {"a": 0.0, "b": 0.0}, np.log(r) if r else -np.inf)


def test_a_step_that_would_leave_r_zero_is_split() -> None:
    """Keeping 2 of 5 in one step keeps b0 (score 2) and a2 (1.5, first of a tie): no layer
    empty, but no path left. Split: a1 goes first, then a2 and b1 keep R = 1.5."""
    engine = _PathEngine()
    select = Selector(["a", "b"], [3, 2], "global")
    copies = {n: m.copy() for n, m in engine.masks.items()}
    one_shot = select(engine.run(), copies, 2, exact_zeros=True)
    assert one_shot["a"].tolist() == [False, False, True] and one_shot["b"].tolist() == [
        True,
        False,
    ]
    masks = {n: m.copy() for n, m in engine.masks.items()}
    dense = engine.run()
    refiner = Refiner(SynFlowScorer(engine, dense, check=False), select, masks, dense)
    assert refiner.bypassed == set()  # both layers are cuts: their scores sum to R
    assert refiner.needed(5, 2)
    masks = refiner(engine.run(), masks, 5, 2)
    after = refiner.scorer(masks)  # the run that checked R
    assert refiner.counts == {"a": 1, "b": 1}
    assert masks["a"].tolist() == [False, False, True]
    assert masks["b"].tolist() == [False, True]
    assert after.log_flow == pytest.approx(np.log(1.5))
    assert engine.masks["a"].tolist() == masks["a"].tolist()  # the engine was restored


def test_a_step_that_cannot_be_split_runs_no_flow_model() -> None:
    """A step removing one weight is not split whatever R it leaves, so it runs no check:
    the flow model runs once, when the next step scores the masks (and the last step of a
    schedule costs no run of its own). Its masks are written beside the ones it started
    from, which stay as they were."""
    engine = _PathEngine()
    select = Selector(["a", "b"], [3, 2], "global")
    masks = {n: m.copy() for n, m in engine.masks.items()}
    dense = engine.run()
    scorer = SynFlowScorer(engine, dense, check=False)
    refiner = Refiner(scorer, select, masks, dense)
    runs = engine.runs
    new = refiner(dense, masks, 5, 4)
    assert engine.runs == runs  # no run to check R
    assert refiner.counts == {"a": 2, "b": 2}
    assert masks["a"].all() and masks["b"].all()  # the masks it started from
    assert new["a"].tolist() == [True, False, True] and new["b"].all()  # a0, a1 tie: a1 goes
    scorer(new)
    assert engine.runs == runs + 1  # the next step's scores


MAX_COMPRESSION = {
    "mlp": lambda s: netgen.mlp(6, 64, 32, 10, seed=s),
    "vgg16_bn_narrow": lambda s: netgen.vgg("vgg16", batch_norm=True, width_div=8, seed=s),
    "resnet18_narrow": lambda s: netgen.resnet(18, input_hw=32, width=4, num_classes=10, seed=s),
    "resnet50_narrow": lambda s: netgen.resnet(50, input_hw=32, width=2, num_classes=10, seed=s),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "seed"),
    [(n, s) for n in sorted(MAX_COMPRESSION) for s in (0, 1) if (n, s) != ("resnet50_narrow", 1)],
)
def test_maximum_compression_keeps_every_layer_and_a_path(name: str, seed: int) -> None:
    """N/L: one weight per layer on average. Without refinement the ResNets lost 4-12 of
    their ~20 layers here (residual branches are no cut: their last weights score lowest)."""
    model = MAX_COMPRESSION[name](seed)
    names = netgen.prunable_weight_names(model)
    total = netgen.param_count(model, names)
    result = onnxflow.prune(model, sparsity=1 - len(names) / total, keep_scores=False)
    assert result.report.kept == len(names)
    assert result.report.emptied == []
    assert np.isfinite(onnxflow.score(result.model).log_flow)
