"""SynFlow scores: equal to float64 autograd, conservation laws, and scale safety.

The golden files were produced by PyTorch float64 autograd (`tests/torch_reference.py`), so
these tests need no PyTorch. The conservation tests need no reference at all: in a network
with homogeneous (here: linearized) activations and no biases, the scores of any set of
weights that cuts every input-output path sum to R (Tanaka et al. 2020, theorem 2).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import netgen
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxflow

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
GOLDEN = {
    "mlp": DATA / "mlp.onnx",
    "vgg11": DATA / "vgg11.onnx",
    "vgg16_bn": DATA / "vgg16_bn.onnx",
    "resnet20": ROOT / "models" / "resnet20.onnx",
}
FLOAT32_MAX_LOG = float(np.log(np.finfo(np.float32).max))  # ~88.7
FLOAT32_TINY_LOG = float(np.log(np.finfo(np.float32).tiny))  # ~-87.3


def layer_log_sum(log_scores: np.ndarray) -> float:
    return float(np.logaddexp.reduce(log_scores.ravel()))


def cut_log_sum(log_scores: dict[str, np.ndarray], names: list[str]) -> float:
    return float(np.logaddexp.reduce([layer_log_sum(log_scores[n]) for n in names]))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_scores_equal_float64_autograd(name: str) -> None:
    with np.load(DATA / f"{name}.golden.npz") as npz:
        golden = {k: npz[k] for k in npz.files}
    log_r = float(golden.pop("__log_R__"))
    result = onnxflow.score(GOLDEN[name])
    assert set(result.log_scores) == set(golden)
    for key, want in golden.items():
        got = result.log_scores[key]
        assert got.shape == want.shape and got.dtype == np.float64
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=key)
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=0, atol=2e-5, err_msg=key)
    assert result.log_flow == pytest.approx(log_r, abs=2e-5)


CHAINS = {
    "mlp": lambda: netgen.mlp(6, 32, 16, 10),
    "mlp_matmul_softmax": lambda: netgen.mlp(5, 24, 12, 7, use_matmul=True, softmax=True),
    "vgg11": lambda: netgen.vgg("vgg11", batch_norm=False, width_div=8),
    "vgg16_bn": lambda: netgen.vgg("vgg16", batch_norm=True, width_div=8, seed=3),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_every_layer_of_a_chain_carries_all_the_flow(name: str) -> None:
    result = onnxflow.score(CHAINS[name]())
    assert np.isfinite(result.log_flow)
    for layer in result.dag.layers:
        assert layer_log_sum(result.log_scores[layer.name]) == pytest.approx(
            result.log_flow, abs=1e-5
        ), layer.name


def test_flow_into_a_neuron_equals_flow_out_of_it() -> None:
    """Theorem 1: per hidden neuron, incoming scores sum to outgoing scores."""
    model = netgen.mlp(4, 16, 8, 5, seed=1)
    scores = onnxflow.score(model).log_scores
    names = netgen.prunable_weight_names(model)
    for w_in, w_out in itertools.pairwise(names):
        # Gemm weights are (out, in): neuron j's inputs are row j, its outputs column j.
        incoming = np.logaddexp.reduce(scores[w_in], axis=1)
        outgoing = np.logaddexp.reduce(scores[w_out], axis=0)
        np.testing.assert_allclose(incoming, outgoing, atol=1e-5)


def residual_cuts(dag: onnxflow.api.WeightDag) -> list[list[str]]:
    """Stem, head, and each downsampling block's {first conv, projection shortcut}."""
    names = [layer.name for layer in dag.layers]
    cuts = [[names[0]], [names[-1]]]
    for n in names:
        if ".downsample." in n:
            block = n.split(".downsample.")[0]
            cuts.append([f"{block}.conv1.weight", n])
    return cuts


@pytest.mark.parametrize(
    "build",
    [
        lambda: netgen.cifar_resnet(20),
        lambda: netgen.cifar_resnet(20, pool="reducemean", seed=2),
        lambda: netgen.resnet(18, input_hw=64, width=16),
        lambda: netgen.resnet(50, input_hw=64, width=8),
    ],
    ids=["resnet20", "resnet20_reducemean", "resnet18", "resnet50_small"],
)
def test_every_cut_of_a_residual_network_carries_all_the_flow(build) -> None:
    result = onnxflow.score(build())
    cuts = residual_cuts(result.dag)
    assert len(cuts) >= 4
    for cut in cuts:
        assert cut_log_sum(result.log_scores, cut) == pytest.approx(result.log_flow, abs=1e-5)


def test_a_parallel_branch_is_not_a_cut() -> None:
    """Inside a residual block the branch carries only part of R: the theorem does not apply."""
    result = onnxflow.score(netgen.cifar_resnet(20))
    inner = layer_log_sum(result.log_scores["layer1.0.conv1.weight"])
    assert inner < result.log_flow - 1e-4


# ---- scale safety ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("depth", [50, 152])
def test_imagenet_resnets_at_224_overflow_float32_but_score_finitely(depth: int) -> None:
    model = netgen.resnet(depth)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    result = onnxflow.score(model)
    assert result.log_flow > FLOAT32_MAX_LOG  # R itself is beyond float32
    for layer in result.dag.layers:
        s = result.log_scores[layer.name]
        assert not np.isnan(s).any() and not np.isposinf(s).any()
        # Every nonzero weight is on an input-output path: its score is positive.
        np.testing.assert_array_equal(np.isneginf(s), weights[layer.name] == 0, layer.name)
    for cut in residual_cuts(result.dag):
        assert cut_log_sum(result.log_scores, cut) == pytest.approx(result.log_flow, abs=1e-4)


def mlp_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [np.abs(inits[n].astype(np.float64)) for n in netgen.prunable_weight_names(model)]


def reference_mlp_log_scores(weights: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Exact SynFlow log-scores of a dense chain (Gemm weights (out, in)), in float64 with
    per-layer renormalization so no depth overflows."""
    f, log_f, forward = np.ones(weights[0].shape[1]), 0.0, []
    for w in weights:
        forward.append((f, log_f))
        f = w @ f
        log_f += np.log(f.max())
        f = f / f.max()
    log_r = float(np.log(f.sum()) + log_f)
    b, log_b, scores = np.ones(weights[-1].shape[0]), 0.0, [None] * len(weights)
    for i in reversed(range(len(weights))):
        fi, log_fi = forward[i]
        with np.errstate(divide="ignore"):
            scores[i] = (
                np.log(weights[i]) + np.log(b)[:, None] + np.log(fi)[None, :] + log_b + log_fi
            )
        b = weights[i].T @ b
        log_b += np.log(b.max())
        b = b / b.max()
    return scores, log_r


def scaled_mlp(depth: int, width: int, factor: float, seed: int = 0) -> onnx.ModelProto:
    model = netgen.mlp(depth, width, width, 10, seed=seed)
    weights = set(netgen.prunable_weight_names(model))
    for t in model.graph.initializer:
        if t.name in weights:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * factor, t.name))
    return model


@pytest.mark.slow
@pytest.mark.parametrize(
    ("factor", "beyond"),
    [(4.0, "overflow"), (0.02, "underflow")],
)
def test_300_layer_mlp_scores_match_exact_reference(factor: float, beyond: str) -> None:
    model = scaled_mlp(300, 64, factor)
    result = onnxflow.score(model)
    want, log_r = reference_mlp_log_scores(mlp_weights(model))
    if beyond == "overflow":
        assert log_r > 10 * FLOAT32_MAX_LOG
    else:
        assert log_r < 5 * FLOAT32_TINY_LOG
    assert result.log_flow == pytest.approx(log_r, abs=1e-3)
    for name, w in zip(netgen.prunable_weight_names(model), want, strict=True):
        np.testing.assert_allclose(result.log_scores[name], w, rtol=0, atol=1e-3)


def test_highly_compressed_network_keeps_scoring_exactly() -> None:
    """At 10^3 compression the kept network's R is far below float32's smallest number;
    its scores must still match the exact float64 computation."""
    model = scaled_mlp(60, 32, 0.3, seed=4)
    pruned = onnxflow.prune(model, compression=3, iterations=30)
    weights = mlp_weights(pruned.model)
    assert all(np.count_nonzero(w) > 0 for w in weights)
    want, log_r = reference_mlp_log_scores(weights)
    assert log_r < FLOAT32_TINY_LOG
    got = onnxflow.score(pruned.model)
    assert got.log_flow == pytest.approx(log_r, abs=1e-3)
    for name, w in zip(netgen.prunable_weight_names(model), want, strict=True):
        np.testing.assert_array_equal(np.isneginf(got.log_scores[name]), np.isneginf(w))
        finite = np.isfinite(w)
        np.testing.assert_allclose(got.log_scores[name][finite], w[finite], atol=1e-3)


def xy_model(nodes: list, inits: list) -> onnx.ModelProto:
    """A graph from input x (1, 8) to output y (1, 4), opset 17."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "xy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_dead_branch_does_not_drown_a_live_one_at_a_sum() -> None:
    """y = x W1 A1..A5 + x W1 B with B all zero, the live path's flow shrinking far below
    float32 range: the dead branch's unit is -inf, so aligning the two at the Add keeps
    the live flow however far below the dead branch's last finite unit it lies."""
    from onnx import helper

    rng = np.random.default_rng(0)
    dims = [8, 6, 6, 6, 6, 6, 4]
    live = [rng.uniform(0.5, 1.0, (a, b)) * 1e-30 for a, b in itertools.pairwise(dims)]
    names = [f"w{i}" for i in range(len(live))]
    inits = [
        numpy_helper.from_array(w.astype(np.float32), n)
        for n, w in [*zip(names, live, strict=True), ("dead", np.zeros((6, 4)))]
    ]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["t0"])]
    for i in range(1, len(live)):
        nodes.append(helper.make_node("MatMul", [f"t{i - 1}", f"w{i}"], [f"t{i}"]))
    nodes += [
        helper.make_node("MatMul", ["t0", "dead"], ["b"]),
        helper.make_node("Add", [f"t{len(live) - 1}", "b"], ["y"]),
    ]
    model = xy_model(nodes, inits)
    want, log_r = reference_mlp_log_scores(  # MatMul weights are (in, out): transposed
        [numpy_helper.to_array(t).astype(np.float64).T for t in inits[:-1]]
    )
    assert log_r < 4 * FLOAT32_TINY_LOG  # R is far below float32 range
    result = onnxflow.score(model, zero_init="strict")  # "ones" would read `dead` as ones
    assert result.log_flow == pytest.approx(log_r, abs=1e-3)
    for name, w in zip(names, want, strict=True):
        np.testing.assert_allclose(result.log_scores[name], w.T, rtol=0, atol=1e-3)
    assert np.isneginf(result.log_scores["dead"]).all()


def test_a_flow_beyond_float32_within_one_op_is_an_error_not_a_wrong_ranking() -> None:
    """Units keep flows in range across ops, but a single op can still overflow float32
    (weights of 1e30 times a factor of 1e30): that is reported, never ranked."""
    from onnx import helper

    inits = [
        numpy_helper.from_array(np.full((8, 8), 1e30, np.float32), "w1"),
        numpy_helper.from_array(np.array(1e30, np.float32), "big"),
        numpy_helper.from_array(np.full((8, 4), 1e30, np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Mul", ["h", "big"], ["s"]),
        helper.make_node("MatMul", ["s", "w2"], ["y"]),
    ]
    model = xy_model(nodes, inits)
    with pytest.raises(onnxflow.OnnxflowError, match="non-finite synaptic flow"):
        onnxflow.score(model)
    with pytest.raises(onnxflow.OnnxflowError, match="non-finite synaptic flow"):
        onnxflow.prune(model, sparsity=0.5, iterations=3)
