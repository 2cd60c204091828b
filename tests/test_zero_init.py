"""Zero-initialized parameters (issue 10 item 2): read as ones so flow crosses them.

Hand-built graphs: a residual branch whose last BatchNormalization scale is 0, an MLP with an
all-zero head, a layer scale (Mul) of zeros, an all-zero LayerNormalization scale, an
all-zero weight seen through a Transpose. In each, the default `zero_init="ones"` gives
exactly the scores of the same model with those tensors set to ones (the substitution is
that and nothing else), every nonzero prunable weight scores > 0, and all-zero weights are
out of N; `zero_init="strict"` keeps the paper's R (zero scores, R = 0 refused).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxflow
from onnxflow.cli import main
from onnxflow.errors import OnnxflowError
from onnxflow.flow.zero_init import ZeroInit, find_zero_init
from onnxflow.options import PruneOptions

RNG_SEED = 0
R_ZERO = "the network carries no synaptic flow (R = 0)"


def make_model(
    nodes: list[onnx.NodeProto],
    inits: dict[str, np.ndarray],
    x_shape: list[int],
    y_shape: list[int],
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "zero_init",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def residual_bn_model(gamma_last: float = 0.0, last: str = "BN") -> onnx.ModelProto:
    """Conv-BN-Relu, then a residual block whose branch ends in a BN of scale `gamma_last`
    (torchvision's zero_init_residual; with `last="IN"` an InstanceNormalization), pooled
    into a Gemm head."""
    rng = np.random.default_rng(RNG_SEED)
    c = 4
    inits: dict[str, np.ndarray] = {
        "w0": rng.normal(size=(c, 3, 3, 3)),
        "w1": rng.normal(size=(c, c, 3, 3)),
        "w2": rng.normal(size=(c, c, 1, 1)),
        "fc": rng.normal(size=(5, c)),
    }
    for i, g in ((0, rng.uniform(0.5, 2, c)), (1, rng.uniform(0.5, 2, c)), (2, gamma_last)):
        inits |= {
            f"g{i}": np.full(c, g) if np.isscalar(g) else g,
            f"b{i}": rng.normal(size=c),
            f"m{i}": rng.normal(size=c),
            f"v{i}": rng.uniform(0.5, 2, c),
        }
    bn = ["g{i}", "b{i}", "m{i}", "v{i}"]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c0", *(s.format(i=0) for s in bn)], ["n0"]),
        helper.make_node("Relu", ["n0"], ["a0"]),
        helper.make_node("Conv", ["a0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", *(s.format(i=1) for s in bn)], ["n1"]),
        helper.make_node("Relu", ["n1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2"], ["c2"]),
        helper.make_node("BatchNormalization", ["c2", *(s.format(i=2) for s in bn)], ["n2"])
        if last == "BN"
        else helper.make_node("InstanceNormalization", ["c2", "g2", "b2"], ["n2"]),
        helper.make_node("Add", ["n2", "a0"], ["s"]),
        helper.make_node("Relu", ["s"], ["a"]),
        helper.make_node("GlobalAveragePool", ["a"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    return make_model(nodes, inits, [1, 3, 6, 6], [1, 5])


def mlp_zero_head(head: float = 0.0, transposed: bool = False) -> onnx.ModelProto:
    """x -> W0 -> Relu -> W1 -> head, the head all `head` (stored transposed, read through
    a Transpose, when `transposed`)."""
    rng = np.random.default_rng(RNG_SEED)
    inits = {
        "w0": rng.normal(size=(6, 8)),
        "w1": rng.normal(size=(8, 8)),
        "head": np.full((3, 8) if transposed else (8, 3), head),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["a0"]),
        helper.make_node("MatMul", ["a0", "w1"], ["h1"]),
    ]
    if transposed:
        nodes.append(helper.make_node("Transpose", ["head"], ["head_t"], perm=[1, 0]))
    nodes.append(helper.make_node("MatMul", ["h1", "head_t" if transposed else "head"], ["y"]))
    return make_model(nodes, inits, [1, 6], [1, 3])


def layer_scale_model(scale: float = 0.0, norm: str = "Mul") -> onnx.ModelProto:
    """x -> W0 -> [branch: W1 -> scale] + skip -> W2; the branch's scale is a layer-scale
    Mul (CaiT), a LayerNormalization gamma or a BatchNormalization gamma on a MatMul's
    output (LeViT's linear + BatchNorm1d, not folded), all `scale`."""
    rng = np.random.default_rng(RNG_SEED)
    inits = {
        "w0": rng.normal(size=(6, 8)),
        "w1": rng.normal(size=(8, 8)),
        "w2": rng.normal(size=(8, 4)),
        "ls": np.full(8, scale),
        "beta": rng.normal(size=8),
        "mean": rng.normal(size=8),
        "var": rng.uniform(0.5, 2, 8),
    }
    scaled = {
        "Mul": helper.make_node("Mul", ["h1", "ls"], ["b"]),
        "LN": helper.make_node("LayerNormalization", ["h1", "ls", "beta"], ["b"]),
        "BN": helper.make_node("BatchNormalization", ["h1", "ls", "beta", "mean", "var"], ["b"]),
    }[norm]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"]),
        helper.make_node("MatMul", ["h0", "w1"], ["h1"]),
        scaled,
        helper.make_node("Add", ["h0", "b"], ["s"]),
        helper.make_node("MatMul", ["s", "w2"], ["y"]),
    ]
    return make_model(nodes, inits, [1, 6], [1, 4])


CASES = {
    "residual-bn": (residual_bn_model, ZeroInit((), ("g2",)), "w1"),
    "zero-head": (mlp_zero_head, ZeroInit(("head",), ()), "w0"),
    "zero-head-transposed": (
        lambda v=0.0: mlp_zero_head(v, transposed=True),
        ZeroInit(("head",), ()),
        "w0",
    ),
    "layer-scale": (layer_scale_model, ZeroInit((), ("ls",)), "w1"),
    "layernorm": (lambda v=0.0: layer_scale_model(v, "LN"), ZeroInit((), ("ls",)), "w1"),
    "batchnorm-on-matmul": (
        lambda v=0.0: layer_scale_model(v, "BN"),
        ZeroInit((), ("ls",)),
        "w1",
    ),
    "instancenorm": (
        lambda v=0.0: residual_bn_model(v, "IN"),
        ZeroInit((), ("g2",)),
        "w1",
    ),
}


def assert_every_nonzero_weight_scores(model: onnx.ModelProto, log_scores) -> None:
    """No nonzero prunable weight has the score 0 (log -inf)."""
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, s in log_scores.items():
        nonzero = stored[name] != 0
        assert np.all(np.isfinite(s[nonzero])), f"{name}: a nonzero weight scores 0"


@pytest.mark.parametrize("case", list(CASES))
def test_zero_init_reads_as_ones_and_every_nonzero_weight_scores(case: str) -> None:
    build, found, branch = CASES[case]
    model = build()
    result = onnxflow.score(model)
    assert_every_nonzero_weight_scores(model, result.log_scores)
    # The substitution is exactly "those tensors hold ones": same R and scores as that model.
    ones = onnxflow.score(build(1.0), zero_init="strict")
    assert result.log_flow == pytest.approx(ones.log_flow, abs=1e-6)
    for name, s in result.log_scores.items():
        np.testing.assert_allclose(s, ones.log_scores[name], rtol=0, atol=1e-5)
    # All-zero weights are not prunable: no score, no mask, not in N.
    assert set(result.log_scores) == set(ones.log_scores) - set(found.weights)
    pruned = onnxflow.prune(model, sparsity=0.5, iterations=3)
    assert pruned.report.zero_init == found
    assert set(pruned.masks) == set(result.log_scores)
    n = sum(np.prod(m.shape) for m in pruned.masks.values())
    assert pruned.report.params == n and pruned.report.kept == round(0.5 * n)
    out = {t.name: numpy_helper.to_array(t) for t in pruned.model.graph.initializer}
    for name in found.names:  # never changed in the output
        assert not np.any(out[name])
    assert np.count_nonzero(pruned.masks[branch]) > 0
    # Strict: the paper's R. The branch scores 0 (or R = 0 is refused, by both).
    if found.weights:
        with pytest.raises(OnnxflowError, match=r"R = 0"):
            onnxflow.prune(model, sparsity=0.5, iterations=3, zero_init="strict")
        with pytest.raises(OnnxflowError, match=r"R = 0"):
            onnxflow.score(model, zero_init="strict")
    else:
        strict = onnxflow.score(model, zero_init="strict")
        assert np.isneginf(strict.log_scores[branch]).all()
        assert np.isfinite(strict.log_flow)
        # Fewer weights kept than score > 0: the zero-scored branch goes first, whole.
        res = onnxflow.prune(model, sparsity=0.6, iterations=3, zero_init="strict")
        assert res.report.zero_init == ZeroInit()
        assert np.count_nonzero(res.masks[branch]) == 0


def test_an_all_zero_weight_is_excluded_like_the_exclude_option() -> None:
    """Reading the zero head as ones is what --exclude does with a head of ones."""
    excluded = onnxflow.prune(
        mlp_zero_head(1.0), sparsity=0.75, iterations=4, exclude=("head",), zero_init="strict"
    )
    ones = onnxflow.prune(mlp_zero_head(0.0), sparsity=0.75, iterations=4)
    assert set(ones.masks) == set(excluded.masks) == {"w0", "w1"}
    for name, mask in excluded.masks.items():
        np.testing.assert_array_equal(ones.masks[name], mask)


def test_a_model_whose_every_weight_is_zero_has_nothing_to_prune() -> None:
    model = mlp_zero_head()
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(np.zeros(t.dims, np.float32), t.name))
    with pytest.raises(OnnxflowError, match=r"has no prunable weights .*not all zero"):
        onnxflow.prune(model, sparsity=0.5)


def computed_zero_branch() -> onnx.ModelProto:
    """x -> shortcut s; x -> a -> b -> + s -> c -> y, where b's weight is computed in the
    graph, `v * gain` with the gain all zero (NFNet's standardized last convolution of each
    residual branch starts so): b is not prunable and its effective weight is zero."""
    rng = np.random.default_rng(RNG_SEED)
    inits = {n: rng.normal(size=(4, 4)) for n in ("s", "a", "v", "c")}
    inits["gain"] = np.zeros((1, 4))
    nodes = [
        helper.make_node("MatMul", ["x", "s"], ["xs"]),
        helper.make_node("MatMul", ["x", "a"], ["xa"]),
        helper.make_node("Mul", ["v", "gain"], ["b"]),
        helper.make_node("MatMul", ["xa", "b"], ["xb"]),
        helper.make_node("Add", ["xb", "xs"], ["h"]),
        helper.make_node("MatMul", ["h", "c"], ["y"]),
    ]
    return make_model(nodes, inits, [1, 4], [1, 4])


def test_an_all_zero_computed_weight_is_read_as_ones() -> None:
    """Under "ones" the branch behind a zero computed weight carries flow, so its prunable
    weight scores; "strict" keeps the paper's R, where it scores 0."""
    model = computed_zero_branch()
    ones = onnxflow.prune(model, sparsity=0.5)
    strict = onnxflow.prune(model, sparsity=0.5, zero_init="strict")
    assert sorted(ones.log_scores) == ["a", "c", "s"]  # b: computed, not prunable
    assert np.isfinite(ones.log_scores["a"]).all()
    assert np.isneginf(strict.log_scores["a"]).all()
    (name,) = ones.report.zero_init.weights
    assert ones.report.zero_init.scales == ()
    assert name not in ("v", "gain")  # the folded effective weight, not a stored tensor


# -- detection on three-node graphs -------------------------------------------------------


def detect(model: onnx.ModelProto) -> ZeroInit:
    graph = gs.import_onnx(model)
    return find_zero_init(graph, {t.name for t in model.graph.initializer})


def three_nodes(op: str, const: np.ndarray, x_shape: list[int], **attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(RNG_SEED)
    inits = {"w": rng.normal(size=(x_shape[-1], x_shape[-1])), "c": const}
    inputs = ["h", "c"] if op != "LayerNormalization" else ["h", "c", "c"]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node(op, inputs, ["y"], **attrs),
    ]
    model = make_model(nodes, inits, x_shape, [])
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize(
    ("op", "const", "x_shape", "want"),
    [
        ("Mul", np.zeros(4), [2, 4], ("c",)),  # per-channel layer scale
        ("Mul", np.zeros(()), [2, 4], ("c",)),  # a scalar (ReZero's alpha)
        ("Mul", np.zeros((3, 2, 4)), [2, 4], ()),  # broadcasts the flow to a larger shape
        ("Mul", np.zeros((1, 1, 4)), [1, 2, 4], ("c",)),  # per channel, as a (1, 1, C) view
        ("Mul", np.zeros((1, 2, 4)), [1, 2, 4], ()),  # a state (a scan's zeros), no scale
        ("Mul", np.array([0.0, 1.0, 0.0, 0.0]), [2, 4], ()),  # not all zero
        ("Add", np.zeros(4), [2, 4], ()),  # a shift, not a scale
        ("Div", np.zeros(4), [2, 4], ()),
        ("LayerNormalization", np.zeros(4), [2, 4], ("c",)),
        ("LayerNormalization", -np.zeros(4), [2, 4], ("c",)),  # -0.0 is zero
    ],
)
def test_detection_of_zero_scales(op: str, const, x_shape, want) -> None:
    assert detect(three_nodes(op, const, x_shape)) == ZeroInit((), want)


def test_detection_of_zero_weights_needs_every_entry_zero() -> None:
    assert detect(mlp_zero_head()) == ZeroInit(("head",), ())
    model = mlp_zero_head()
    head = np.zeros((8, 3), np.float32)
    head[7, 2] = 1e-30
    model.graph.initializer[2].CopyFrom(numpy_helper.from_array(head, "head"))
    assert detect(model) == ZeroInit()


def test_summary_names_the_first_tensors_and_counts_the_rest() -> None:
    z = ZeroInit(("h",), ("a", "b", "c"))
    assert len(z) == 4
    assert z.summary() == (
        "4 zero-initialized tensors read as ones (1 weight, not prunable; 3 scales): "
        "h, a, b, ... (+1)"
    )
    assert ZeroInit((), ("g",)).summary() == ("1 zero-initialized tensor read as ones (1 scale): g")


# -- option, CLI, report --------------------------------------------------------------------


def test_zero_init_option_is_validated() -> None:
    with pytest.raises(OnnxflowError, match=r"zero_init must be 'ones' or 'strict', got 'zero'"):
        PruneOptions(0.5, zero_init="zero")  # type: ignore[arg-type]


def test_cli_notes_the_substitution_and_strict_refuses_r_zero(tmp_path: Path, capsys) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(mlp_zero_head().SerializeToString())
    report = tmp_path / "r.json"
    args = ["prune", str(path), "--sparsity", "0.5", "--iterations", "2"]
    assert main([*args, "--report", str(report)]) == 0
    err = capsys.readouterr().err
    assert (
        "note: 1 zero-initialized tensor read as ones (1 weight, not prunable): head "
        "(--zero-init strict: the paper's R)\n"
    ) in err
    totals = json.loads(report.read_text())["totals"]
    assert totals["zero_init"] == {"weights": ["head"], "scales": []}
    assert totals["params"] == 6 * 8 + 8 * 8
    out = tmp_path / "strict.onnx"
    assert main([*args, "--zero-init", "strict", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {R_ZERO}") and err.count("\n") == 1
    assert not out.exists()
    assert main([*args, "--zero-init", "zeros", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "zeros" in err and err.count("\n") == 1


# -- real exports (committed; tests/exported/make_zero_init_models.py) ----------------------

EXPORTED = Path(__file__).resolve().parent / "exported"


def nonzero_scoring_zero(model: onnx.ModelProto, log_scores) -> tuple[int, int]:
    """(nonzero prunable weights whose score is 0, nonzero prunable weights)."""
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    bad = sum(int(np.sum(np.isneginf(s) & (stored[n] != 0))) for n, s in log_scores.items())
    return bad, sum(int(np.count_nonzero(stored[n])) for n in log_scores)


@pytest.mark.parametrize(
    ("name", "kind"),
    [("zero_init_resnet_folded", "weights"), ("zero_init_resnet_bn", "scales")],
)
def test_zero_init_residual_resnet_export(name: str, kind: str) -> None:
    """torchvision ResNet, zero_init_residual=True: bn3's zero scale folded into an all-zero
    conv3 (TorchScript's constant folding, and the dynamo exporter) or kept as a
    BatchNormalization of scale 0. Strict R gives 40-48% of the nonzero weights the score 0
    (every residual branch); read as ones, none."""
    model = onnx.load(EXPORTED / f"{name}.onnx")
    result = onnxflow.prune(model, sparsity=0.9, iterations=5)
    found = getattr(result.report.zero_init, kind)
    assert len(found) == 4 and len(result.report.zero_init) == 4  # one per Bottleneck
    bad, total = nonzero_scoring_zero(model, result.log_scores)
    assert bad == 0 and total > 30000
    # The residual branches keep weights; only parallel 1x1 shortcut convs may empty, as in
    # the paper's own ResNets (not a cut: ../shared/SYNFLOW.md), with or without zero init.
    for layer in result.report.layers:
        assert layer.kept > 0 or "downsample" in layer.nodes[0], layer.nodes
    strict = onnxflow.score(model, zero_init="strict")
    bad, total = nonzero_scoring_zero(model, strict.log_scores)
    assert bad > 0.35 * total


def test_vit_export_zero_head_is_found_and_strict_refuses() -> None:
    """torchvision VisionTransformer: its classification head is all zero."""
    model = onnx.load(EXPORTED / "zero_init_vit.onnx")
    state_dag = onnxflow.score(model, zero_init="ones").dag
    assert "heads.head.weight" not in {layer.name for layer in state_dag.layers}
    assert "heads.head.weight" in state_dag.read_as_ones
    with pytest.raises(OnnxflowError, match=r"R = 0"):
        onnxflow.prune(model, sparsity=0.5, iterations=2, zero_init="strict")


def test_vit_export_prunes_and_every_nonzero_weight_scores() -> None:
    model = onnx.load(EXPORTED / "zero_init_vit.onnx")
    result = onnxflow.prune(model, sparsity=0.9, iterations=5)
    assert result.report.zero_init == ZeroInit(("heads.head.weight",), ())
    bad, _ = nonzero_scoring_zero(model, result.log_scores)
    assert bad == 0


# -- live exports (need torch and torchvision) ---------------------------------------------


def torch_export(module, shape: tuple[int, ...]) -> onnx.ModelProto:
    import io

    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.onnx.export(module.eval(), (torch.ones(shape),), buf, dynamo=False, opset_version=17)
    model = onnx.load_from_string(buf.getvalue())
    model.ir_version = min(model.ir_version, 10)
    return model


def test_torchvision_resnet50_zero_init_residual_live() -> None:
    """resnet50(zero_init_residual=True) at 64x64: strict R gives 76% of the nonzero
    weights the score 0 (measured); read as ones, none. TorchScript folds each bn3 into
    its conv3 and stores the four all-zero shapes once each, shared by the 16 blocks."""
    pytest.importorskip("torch")
    models = pytest.importorskip("torchvision.models")
    model = torch_export(models.resnet50(weights=None, zero_init_residual=True), (1, 3, 64, 64))
    result = onnxflow.score(model)
    assert len(result.dag.read_as_ones) == 4
    bad, total = nonzero_scoring_zero(model, result.log_scores)
    assert bad == 0 and total > 2e7
    bad, total = nonzero_scoring_zero(model, onnxflow.score(model, zero_init="strict").log_scores)
    assert bad > 0.7 * total


def test_torchvision_vit_zero_head_live() -> None:
    pytest.importorskip("torch")
    vt = pytest.importorskip("torchvision.models.vision_transformer")
    vit = vt.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    model = torch_export(vit, (1, 3, 32, 32))
    result = onnxflow.prune(model, sparsity=0.9, iterations=3)
    assert result.report.zero_init.weights == ("heads.head.weight",)
    bad, _ = nonzero_scoring_zero(model, result.log_scores)
    assert bad == 0


def test_inspect_lists_all_zero_weights() -> None:
    """inspect shows the stored model: an all-zero weight is a layer of density 0."""
    from onnxflow.inspect import inspect_model

    result = inspect_model(mlp_zero_head())
    assert [layer.name for layer in result.dag.layers] == ["w0", "w1", "head"]
    assert result.nonzero["head"] == 0


def test_detection_keeps_large_external_weights_in_their_file(tmp_path, monkeypatch) -> None:
    """Looking for zeros reads each lazily loaded weight without keeping it in the graph
    (the large-model memory budget, docs/large_models.md)."""
    from onnx_graphsurgeon.ir.tensor import LazyValues

    import onnxflow.external
    from onnxflow.analyze import analyze

    monkeypatch.setattr(onnxflow.external, "LAZY_BYTES", 0)
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        mlp_zero_head(), path, save_as_external_data=True, location="ext.bin", size_threshold=0
    )
    analysis = analyze(path)
    assert analysis.zero_init == ZeroInit(("head",), ())
    tensors = analysis.graph.tensors()
    assert all(isinstance(tensors[n]._values, LazyValues) for n in ("w0", "w1", "head"))
