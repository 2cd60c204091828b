"""End-to-end tests of the Python API: `onnxflow.prune()` and `onnxflow.save()`.

Every check compares the pruned model with the ORIGINAL model: the test applies the masks
itself (weights times masks) and runs both in onnxruntime, so a wrong rewrite of the graph
shows up as different outputs, not just as a wrong count.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import netgen
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxflow
from onnxflow import OnnxflowError

TESTS_DIR = Path(__file__).resolve().parent
DATA_DIR = TESTS_DIR / "data"
RESNET20 = TESTS_DIR.parent / "models" / "resnet20.onnx"

# Small models (seconds in total); "resnet20" is the PyTorch export in models/.
BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "resnet20": lambda: onnx.load(RESNET20),
    "mlp": lambda: netgen.mlp(4, 32, 20, 10, seed=1),
    "mlp_matmul": lambda: netgen.mlp(3, 16, 12, 7, seed=2, use_matmul=True, softmax=True),
    "vgg11": lambda: netgen.vgg("vgg11", width_div=8, num_classes=10),
    "cifar_resnet8": lambda: netgen.cifar_resnet(8, seed=3),
    "tiny_cnn": lambda: netgen.tiny_cnn(seed=4),
    "data_vgg16_bn": lambda: onnx.load(DATA_DIR / "vgg16_bn.onnx"),
}
SMALL = [name for name in BUILDERS if name != "resnet20"]
ITERS = 5


# -- helpers ---------------------------------------------------------------------------------


@functools.cache
def _serialized(name: str) -> bytes:
    return BUILDERS[name]().SerializeToString()


def load(name: str) -> onnx.ModelProto:
    """A fresh copy of a test model (tests may not share a mutable ModelProto)."""
    return onnx.load_from_string(_serialized(name))


@functools.cache
def _cached_prune(name: str, **options: object) -> onnxflow.PruneResult:
    return onnxflow.prune(load(name), **options)


def prune(name: str, **options: object) -> onnxflow.PruneResult:
    """Prune a named test model; identical calls are computed once per session."""
    options.setdefault("iterations", ITERS)
    return _cached_prune(name, **options)


def prunable_size(model: onnx.ModelProto) -> int:
    return netgen.param_count(model, netgen.prunable_weight_names(model))


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def apply_masks(model: onnx.ModelProto, masks: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The original model with each masked weight multiplied by its mask (done by the test)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in masks:
            w = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array((w * masks[t.name]).astype(w.dtype), t.name))
    return out


def feeds(model: onnx.ModelProto, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for inp in model.graph.input:
        dims = [
            d.dim_value if d.HasField("dim_value") else batch
            for d in inp.type.tensor_type.shape.dim
        ]
        out[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return out


def run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.ir_version = min(m.ir_version, 10)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)


def kept(masks: dict[str, np.ndarray]) -> int:
    return sum(int(np.count_nonzero(m)) for m in masks.values())


def assert_pruned_model_correct(original: onnx.ModelProto, result: onnxflow.PruneResult) -> None:
    """The pruned model is the original with masked weights zeroed, and nothing else changed."""
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    before, after = initializers(original), initializers(pruned)
    assert list(before) == list(after), "initializers added, removed or reordered"
    assert set(result.masks) == set(netgen.prunable_weight_names(original))
    for name, tensor in before.items():
        if name not in result.masks:
            assert after[name].SerializeToString() == tensor.SerializeToString(), name
            continue
        w, p = numpy_helper.to_array(tensor), numpy_helper.to_array(after[name])
        m = result.masks[name]
        assert p.dtype == w.dtype and p.shape == w.shape == m.shape, name
        assert m.dtype == np.bool_, name
        assert np.all(p[~m] == 0), f"{name}: masked entries are not zero"
        np.testing.assert_array_equal(p[m], w[m], err_msg=f"{name}: kept entries changed")
    # Nodes, attributes, inputs, outputs, opsets: all unchanged.
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        a = [x.SerializeToString() for x in getattr(original.graph, field)]
        b = [x.SerializeToString() for x in getattr(pruned.graph, field)]
        assert a == b, f"graph.{field} changed"
    assert list(original.opset_import) == list(pruned.opset_import)
    # Outputs equal the original model run with the masks applied by the test.
    x = feeds(original)
    for want, got in zip(run(apply_masks(original, result.masks), x), run(pruned, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# -- exact counts ----------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["exponential", "linear"])
@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("sparsity", [0.3, 0.9, 0.987])
def test_resnet20_kept_count_is_exact(sparsity: float, scope: str, schedule: str) -> None:
    model = load("resnet20")
    n = prunable_size(model)
    result = prune("resnet20", sparsity=sparsity, scope=scope, schedule=schedule)
    assert kept(result.masks) == round((1 - sparsity) * n)
    assert result.report.kept == kept(result.masks)
    assert result.report.params == n


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("sparsity", [0.5, 0.95])
def test_small_models_kept_count_is_exact(name: str, sparsity: float, scope: str) -> None:
    n = prunable_size(load(name))
    result = prune(name, sparsity=sparsity, scope=scope)
    assert kept(result.masks) == round((1 - sparsity) * n)


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "mlp"])
def test_compression_2_keeps_one_percent(name: str) -> None:
    n = prunable_size(load(name))
    result = prune(name, compression=2)
    assert kept(result.masks) == round(n / 100)
    assert result.report.compression == pytest.approx(2, abs=0.01)


def test_sparsity_zero_keeps_everything() -> None:
    original = load("resnet20")
    result = prune("resnet20", sparsity=0.0)
    assert all(m.all() for m in result.masks.values())
    assert result.report.density == 1.0
    assert_pruned_model_correct(original, result)
    x = feeds(original)
    for want, got in zip(run(original, x), run(result.model, x), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["mlp", "tiny_cnn"])
def test_sparsity_keeping_nothing_is_an_error(name: str) -> None:
    n = prunable_size(load(name))
    with pytest.raises(OnnxflowError, match="keeps"):
        onnxflow.prune(load(name), sparsity=1 - 0.4 / n, iterations=2)


# -- the pruned model ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "sparsity", "scope"),
    [
        ("resnet20", 0.99, "global"),
        ("resnet20", 0.9, "local"),
        *[(name, 0.8, "global") for name in SMALL],
    ],
)
def test_pruned_model_is_the_original_with_masks_applied(
    name: str, sparsity: float, scope: str
) -> None:
    assert_pruned_model_correct(load(name), prune(name, sparsity=sparsity, scope=scope))


def test_input_model_is_not_mutated() -> None:
    model = load("resnet20")
    before = model.SerializeToString()
    onnxflow.prune(model, sparsity=0.9, iterations=3)
    assert model.SerializeToString() == before


def test_path_and_modelproto_give_the_same_result() -> None:
    by_path = onnxflow.prune(RESNET20, sparsity=0.9, iterations=ITERS)
    by_proto = prune("resnet20", sparsity=0.9)
    assert by_path.model.SerializeToString() == by_proto.model.SerializeToString()


# -- SynFlow properties ----------------------------------------------------------------------


@pytest.mark.slow
def test_iterative_synflow_on_resnet20_empties_no_layer() -> None:
    """The paper's point: 100 iterations avoid layer collapse at 99% sparsity."""
    model = load("resnet20")
    result = onnxflow.prune(model, sparsity=0.99)  # the default 100 iterations
    assert result.report.options["iterations"] == 100
    assert kept(result.masks) == round(0.01 * prunable_size(model))
    empty = [name for name, m in result.masks.items() if not m.any()]
    assert empty == [] and result.report.emptied == []
    # One-shot pruning does collapse layers at this sparsity (so the test above means something).
    assert prune("resnet20", sparsity=0.99, iterations=1).report.emptied
    # The scores reported are the dense network's, whatever the iterations.
    dense = prune("resnet20", sparsity=0.5, iterations=1).log_scores
    assert result.log_scores.keys() == dense.keys()
    for name, scores in result.log_scores.items():
        np.testing.assert_array_equal(scores, dense[name], err_msg=name)


@pytest.mark.parametrize("scope", ["global", "local"])
def test_log_scores_are_dense_float64_logs(scope: str) -> None:
    model = load("resnet20")
    result = prune("resnet20", sparsity=0.95, scope=scope, iterations=7)
    one_shot = prune("resnet20", sparsity=0.3, iterations=1)
    assert list(result.log_scores) == netgen.prunable_weight_names(model)
    inits = initializers(model)
    for name, scores in result.log_scores.items():
        assert scores.dtype == np.float64
        assert scores.shape == tuple(inits[name].dims)
        assert not np.isnan(scores).any() and not np.isposinf(scores).any()
        np.testing.assert_array_equal(scores, one_shot.log_scores[name], err_msg=name)


# That pruned weights stay pruned, round after round: tests/test_loop.py.


def test_one_shot_global_masks_are_nested_in_sparsity() -> None:
    """One round ranks the same dense scores, so a higher sparsity keeps a subset."""
    previous = None
    for sparsity in (0.5, 0.8, 0.95, 0.99):
        masks = prune("vgg11", sparsity=sparsity, iterations=1).masks
        if previous is not None:
            for name, m in masks.items():
                assert not (m & ~previous[name]).any(), name
        previous = masks


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "tiny_cnn"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.97])
def test_local_scope_prunes_each_layer_to_the_target(name: str, sparsity: float) -> None:
    result = prune(name, sparsity=sparsity, scope="local")
    density = 1 - sparsity
    for layer, mask in result.masks.items():
        assert abs(np.count_nonzero(mask) / mask.size - density) <= 1 / mask.size + 1e-12, layer


def test_determinism(tmp_path) -> None:
    a = onnxflow.prune(load("resnet20"), sparsity=0.95, iterations=ITERS)
    b = onnxflow.prune(load("resnet20"), sparsity=0.95, iterations=ITERS)
    assert a.masks.keys() == b.masks.keys()
    for name in a.masks:
        np.testing.assert_array_equal(a.masks[name], b.masks[name])
    onnxflow.save(a, tmp_path / "a.onnx")
    onnxflow.save(b, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_save_writes_the_pruned_model(tmp_path) -> None:
    result = prune("tiny_cnn", sparsity=0.9)
    out = tmp_path / "tiny.pruned.onnx"
    onnxflow.save(result, out, masks=tmp_path / "m.npz")
    assert out.read_bytes() == result.model.SerializeToString()
    with np.load(tmp_path / "m.npz") as saved:
        assert sorted(saved.files) == sorted(result.masks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "tiny.pruned.onnx"]


# -- input shapes ----------------------------------------------------------------------------


def test_symbolic_batch_defaults_to_one() -> None:
    sym = netgen.vgg("vgg11", width_div=8, num_classes=10, batch="N")
    fixed = load("vgg11")
    result = onnxflow.prune(sym, sparsity=0.9, iterations=ITERS)
    # The batch dimension does not change the scores: same masks as the batch-1 model.
    reference = prune("vgg11", sparsity=0.9)
    for name, m in reference.masks.items():
        np.testing.assert_array_equal(result.masks[name], m, err_msg=name)
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    x = feeds(sym, batch=3)
    for want, got in zip(run(apply_masks(sym, result.masks), x), run(result.model, x), strict=True):
        assert got.shape[0] == 3
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert_pruned_model_correct(fixed, prune("vgg11", sparsity=0.9))


def _with_dynamic_dims(model: onnx.ModelProto, dims: dict[int, str]) -> onnx.ModelProto:
    shape = model.graph.input[0].type.tensor_type.shape
    for i, label in dims.items():
        shape.dim[i].Clear()
        shape.dim[i].dim_param = label
    return model


def test_other_dynamic_dim_needs_input_shape() -> None:
    model = _with_dynamic_dims(netgen.cifar_resnet(8, seed=3), {0: "N", 2: "height", 3: "width"})
    with pytest.raises(OnnxflowError) as err:
        onnxflow.prune(model, sparsity=0.9, iterations=2)
    message = str(err.value)
    assert "'input'" in message and ("height" in message or "dimension 2" in message)
    assert "\n" not in message
    result = onnxflow.prune(
        model, sparsity=0.9, iterations=ITERS, input_shapes={"input": (1, 3, 32, 32)}
    )
    reference = prune("cifar_resnet8", sparsity=0.9)
    for name, m in reference.masks.items():
        np.testing.assert_array_equal(result.masks[name], m, err_msg=name)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        ({"nope": (1, 3, 32, 32)}, "nope"),
        ({"input": (1, 3, 32)}, "rank"),
        ({"input": (1, 4, 32, 32)}, "dimension 1"),
    ],
)
def test_bad_input_shapes_are_errors(shapes: dict, match: str) -> None:
    model = _with_dynamic_dims(netgen.cifar_resnet(8, seed=3), {2: "h", 3: "w"})
    with pytest.raises(OnnxflowError, match=match):
        onnxflow.prune(model, sparsity=0.9, iterations=2, input_shapes=shapes)


def test_batch_given_larger_than_one_gives_the_same_masks() -> None:
    sym = netgen.vgg("vgg11", width_div=8, num_classes=10, batch="N")
    result = onnxflow.prune(
        sym, sparsity=0.9, iterations=ITERS, input_shapes={"input": (4, 3, 32, 32)}
    )
    for name, m in prune("vgg11", sparsity=0.9).masks.items():
        np.testing.assert_array_equal(result.masks[name], m, err_msg=name)


# -- option validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"sparsity": 1.0},
        {"sparsity": -0.1},
        {"sparsity": math.nan},
        {"sparsity": math.inf},
        {"sparsity": True},
        {"compression": -1},
        {"compression": math.inf},
        {"sparsity": 0.5, "compression": 1},
        {},
        {"sparsity": 0.5, "iterations": 0},
        {"sparsity": 0.5, "iterations": 2.5},
        {"sparsity": 0.5, "schedule": "cosine"},
        {"sparsity": 0.5, "scope": "layer"},
        {"sparsity": 0.5, "provider": "tpu"},
    ],
)
def test_bad_options_are_one_line_errors(options: dict) -> None:
    with pytest.raises(OnnxflowError) as err:
        onnxflow.prune(load("mlp"), **options)
    assert str(err.value) and "\n" not in str(err.value)
