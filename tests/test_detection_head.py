"""SSD's background class: weights that reach the outputs only through a Softmax denominator.

torchvision's SSD and SSDlite heads predict `anchors x classes` logits per position, take a
Softmax over the classes and keep classes 1..K-1 (one Gather per class, then a score
threshold, NonZero and GatherND). Class 0, the background, reaches the detections only
through the Softmax's denominator. onnxflow's Softmax rule passes each element's flow to its
own output (docs/flow_rules.md): a normalization statistic is not a path of R, as for
LayerNorm's or L2Norm's divisor. So in the analysis graph the output channels `c % K == 0` of
the classification conv reach no output and their weights score exactly 0 - the zero scores
docs/models.md reports for ssd300_vgg16 and ssdlite320_mobilenet_v3_large. These tests build
the same pattern by hand and check that exactly those weights score 0, that the rest match
the float64 oracle, and that the zeros come from the class selection alone.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from float64_flow import float64_log_scores
from onnx import TensorProto, helper, numpy_helper
from test_exactness import assert_no_positive_score_lost, engine_of

A, K, C, H = 2, 4, 6, 4  # anchors per position, classes (0 = background), trunk width, map


def ssd_head(classes: list[int], softmax: bool = True) -> onnx.ModelProto:
    """Trunk conv, then SSD's two heads on it: box regression (a plain output) and class
    logits -> (1, positions*A, K) -> Softmax -> per-class Gather -> threshold/NonZero/GatherND,
    as torchvision's TorchScript export of SSD's postprocess writes it."""
    rng = np.random.default_rng(0)
    inits = {
        "trunk": rng.normal(size=(C, 3, 3, 3)),
        "cls": rng.normal(size=(A * K, C, 3, 3)),
        "box": rng.normal(size=(A * 4, C, 3, 3)),
    }
    tensors = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    ints = {
        "shape5": [1, A, K, H, H], "shape3": [1, -1, K], "box5": [1, A, 4, H, H],
        "box3": [1, -1, 4], "axis0": [0],
    }  # fmt: skip
    tensors += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
    tensors.append(numpy_helper.from_array(np.array(0.01, np.float32), "thresh"))
    pad = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "trunk"], ["t0"], **pad),
        helper.make_node("Relu", ["t0"], ["t"]),
        helper.make_node("Conv", ["t", "cls"], ["c"], **pad),
        helper.make_node("Reshape", ["c", "shape5"], ["c5"]),
        helper.make_node("Transpose", ["c5"], ["ct"], perm=[0, 3, 4, 1, 2]),
        helper.make_node("Reshape", ["ct", "shape3"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["p"], axis=-1)
        if softmax
        else helper.make_node("Identity", ["logits"], ["p"]),
        helper.make_node("Squeeze", ["p", "axis0"], ["p2"]),  # (positions*A, K)
        helper.make_node("Conv", ["t", "box"], ["b"], **pad),
        helper.make_node("Reshape", ["b", "box5"], ["b5"]),
        helper.make_node("Transpose", ["b5"], ["bt"], perm=[0, 3, 4, 1, 2]),
        helper.make_node("Reshape", ["bt", "box3"], ["boxes"]),
    ]
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, H * H * A, 4])]
    for k in classes:
        tensors.append(numpy_helper.from_array(np.array(k, np.int64), f"k{k}"))
        nodes += [
            helper.make_node("Gather", ["p2", f"k{k}"], [f"s{k}"], axis=1),
            helper.make_node("Greater", [f"s{k}", "thresh"], [f"m{k}"]),
            helper.make_node("NonZero", [f"m{k}"], [f"nz{k}"]),
            helper.make_node("Transpose", [f"nz{k}"], [f"idx{k}"], perm=[1, 0]),
            helper.make_node("GatherND", [f"s{k}", f"idx{k}"], [f"score{k}"]),
        ]
        outputs.append(helper.make_tensor_value_info(f"score{k}", TensorProto.FLOAT, ["n"]))
    graph = helper.make_graph(
        nodes, "ssd_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, H])],
        outputs, tensors,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _scores(model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """onnxflow's log-scores (float32 engine) and the float64 oracle's."""
    engine = engine_of(model)
    assert_no_positive_score_lost(engine)
    return engine.run().log(), float64_log_scores(engine)


def test_background_class_weights_score_zero() -> None:
    got, want = _scores(ssd_head(list(range(1, K))))
    background = np.arange(A * K) % K == 0
    cls = got["cls"]
    assert np.isneginf(cls[background]).all()
    assert np.isfinite(cls[~background]).all()
    assert np.isfinite(got["trunk"]).all() and np.isfinite(got["box"]).all()
    for name in ("trunk", "cls", "box"):
        same_zeros = np.isneginf(got[name]) == np.isneginf(want[name])
        assert same_zeros.all(), name
        live = np.isfinite(want[name])
        np.testing.assert_allclose(got[name][live], want[name][live], rtol=1e-5, atol=1e-4)


def test_the_softmax_is_not_the_cut() -> None:
    """The Softmax passes flow element by element: without it the scores are the same."""
    with_softmax, _ = _scores(ssd_head(list(range(1, K))))
    without, _ = _scores(ssd_head(list(range(1, K)), softmax=False))
    for name in ("trunk", "cls", "box"):
        np.testing.assert_allclose(with_softmax[name], without[name], rtol=1e-6)


@pytest.mark.parametrize("classes", [list(range(K)), [0]])
def test_selecting_the_background_class_gives_it_flow(classes: list[int]) -> None:
    """Kept by the Gathers, class 0 scores like any other; kept alone, only it scores."""
    got, _ = _scores(ssd_head(classes))
    kept = np.isin(np.arange(A * K) % K, classes)
    assert np.isfinite(got["cls"][kept]).all()
    assert np.isneginf(got["cls"][~kept]).all()


def _zoo():  # benchmarks/zoo.py imports only the standard library at module level
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "zoo.py"
    spec = importlib.util.spec_from_file_location("zoo_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_zoo_layout_splits_dead_taps_from_dropped_channels() -> None:
    """SSD's last class head (3x3 conv on a 1x1 map): 8 of 9 taps see only padding, and on
    the live tap the background channels score 0. The benchmark counts the first part as taps
    (explained) and the second as whole output channels, not as 'scattered'."""
    zoo = _zoo()
    w = np.ones((2 * K, 3, 3, 3), np.float32)
    s = np.full(w.shape, -np.inf)
    s[:, :, 1, 1] = 0.0  # the centre tap is live
    s[::K, :, 1, 1] = -np.inf  # background channels 0 and K
    assert zoo._zero_layout(w, s) == zoo.TAPS_AND_SLICES
    assert zoo._dead_tap_zeros(w, s) == 2 * K * 3 * 8
    s[1, 0, 1, 1] = -np.inf  # one more zero, not a whole channel
    assert zoo._zero_layout(w, s) == "scattered"
