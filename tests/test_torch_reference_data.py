"""Guards on the committed golden SynFlow data (no PyTorch needed).

The files are produced by ``python tests/torch_reference.py``; these tests make
sure each golden file still matches its ONNX model and is self-consistent, so
a failing onnxflow comparison points at onnxflow and not at stale data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

TESTS_DIR = Path(__file__).resolve().parent
DATA_DIR = TESTS_DIR / "data"
MODELS_DIR = TESTS_DIR.parent / "models"
LOG_R_KEY = "__log_R__"

# name -> (onnx model, golden log-scores, input shape)
CASES: dict[str, tuple[Path, Path, tuple[int, ...]]] = {
    "mlp": (DATA_DIR / "mlp.onnx", DATA_DIR / "mlp.golden.npz", (1, 64)),
    "vgg11": (DATA_DIR / "vgg11.onnx", DATA_DIR / "vgg11.golden.npz", (1, 3, 32, 32)),
    "vgg16_bn": (DATA_DIR / "vgg16_bn.onnx", DATA_DIR / "vgg16_bn.golden.npz", (1, 3, 32, 32)),
    "resnet20": (MODELS_DIR / "resnet20.onnx", DATA_DIR / "resnet20.golden.npz", (1, 3, 32, 32)),
}

# Exact zero scores that are correct, not bugs: the last VGG conv runs on a
# 2x2 map and feeds a 2x2 max-pool, so only one position per output channel
# receives gradient and 5 of the 9 taps there only ever see zero padding.
EXPECTED_NEG_INF: dict[str, dict[str, int]] = {
    "vgg11": {"features.18.weight": 5120},
    "vgg16_bn": {"features.40.weight": 5120},
}

# Layers every input-output path crosses exactly once: their scores sum to R.
CHAIN_MODELS = ("mlp", "vgg11", "vgg16_bn")
RESNET20_CUTS = (
    ("conv1.weight",),
    ("fc.weight",),
    ("layer2.0.conv1.weight", "layer2.0.downsample.0.weight"),
    ("layer3.0.conv1.weight", "layer3.0.downsample.0.weight"),
)


def _load(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    onnx_path, golden_path, _ = CASES[name]
    model = onnx.load(str(onnx_path))
    with np.load(golden_path) as npz:
        golden = {k: npz[k] for k in npz.files}
    return model, golden


def _scored_weights(model: onnx.ModelProto) -> set[str]:
    """Initializers used as the weight input of a Conv, Gemm or MatMul node."""
    inits = {t.name for t in model.graph.initializer}
    return {
        n.input[1]
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in inits
    }


def _log_sum(log_scores: np.ndarray) -> float:
    finite = log_scores[np.isfinite(log_scores)]
    top = float(finite.max())
    return top + float(np.log(np.exp(finite - top).sum()))


@pytest.mark.parametrize("name", list(CASES))
def test_golden_matches_onnx(name: str) -> None:
    model, golden = _load(name)
    assert LOG_R_KEY in golden
    log_r = golden.pop(LOG_R_KEY)
    assert log_r.shape == () and log_r.dtype == np.float64 and np.isfinite(log_r)

    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    assert set(golden) == _scored_weights(model)
    expected_inf = EXPECTED_NEG_INF.get(name, {})
    for key, value in golden.items():
        assert value.dtype == np.float64, key
        assert value.shape == inits[key], key
        assert not np.isnan(value).any() and not np.isposinf(value).any(), key
        assert int(np.isneginf(value).sum()) == expected_inf.get(key, 0), key


@pytest.mark.parametrize("name", CHAIN_MODELS)
def test_conservation_chain(name: str) -> None:
    _, golden = _load(name)
    log_r = float(golden.pop(LOG_R_KEY))
    for key, value in golden.items():
        assert _log_sum(value) == pytest.approx(log_r, abs=1e-9), key


def test_conservation_resnet20_cuts() -> None:
    _, golden = _load("resnet20")
    log_r = float(golden[LOG_R_KEY])
    for cut in RESNET20_CUTS:
        total = float(np.logaddexp.reduce([_log_sum(golden[k]) for k in cut]))
        assert total == pytest.approx(log_r, abs=1e-9), cut


def _synflow_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """Same linearization as the reference, applied to initializers directly."""
    ops = {
        "Conv": {1: "abs", 2: "zero"},
        "Gemm": {1: "abs", 2: "zero"},
        "BatchNormalization": {1: "abs", 2: "zero", 3: "zero"},
    }
    action: dict[str, str] = {}
    for node in model.graph.node:
        for idx, what in ops.get(node.op_type, {}).items():
            if idx < len(node.input):
                action[node.input[idx]] = what
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in action:
            arr = numpy_helper.to_array(init)
            arr = np.abs(arr) if action[init.name] == "abs" else np.zeros_like(arr)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_log_r_matches_onnxruntime(name: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, golden = _load(name)
    shape = CASES[name][2]
    sess = ort.InferenceSession(
        _synflow_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    out = sess.run(None, {"input": np.ones(shape, dtype=np.float32)})[0]
    r = float(out.astype(np.float64).sum())
    assert np.log(r) == pytest.approx(float(golden[LOG_R_KEY]), abs=1e-4)
