"""Export the small scikit-learn models in this folder with skl2onnx (needs scikit-learn, skl2onnx).

    python tests/exported/make_sklearn_models.py

Written with scikit-learn 1.9.1 and skl2onnx 1.20.0, target opsets {'': 17, 'ai.onnx.ml': 3},
dynamic batch. skl2onnx writes an MLP as MatMul + Add layers with activations, a label output
(ArgMax, or a threshold for a binary problem) beside the probabilities, and by default
a ZipMap (ai.onnx.ml) that turns the probabilities into a sequence of maps.

- ``sklearn_mlp_binary.onnx``: MLPClassifier (16, 8) on a binary problem, ZipMap off
  (probabilities built as [1 - p, p]).
- ``sklearn_mlp_multiclass_zipmap.onnx``: MLPClassifier (16, 8), 3 classes, ZipMap kept.
- ``sklearn_pipeline.onnx``: StandardScaler + MLPRegressor in a Pipeline (ai.onnx.ml Scaler).

The .onnx files are committed so the tests need no framework.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import make_classification, make_regression
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
OPSETS = {"": 17, "ai.onnx.ml": 3}


def _save(proto: onnx.ModelProto, name: str) -> None:
    proto.ir_version = min(proto.ir_version, 10)  # onnxruntime refuses newer IR versions
    onnx.checker.check_model(proto)
    path = HERE / name
    onnx.save(proto, path)
    print(f"wrote {path.relative_to(HERE.parent.parent)} ({path.stat().st_size / 1024:.0f} KiB)")


def _convert(model, n_features: int, options=None) -> onnx.ModelProto:
    return to_onnx(
        model,
        initial_types=[("features", FloatTensorType([None, n_features]))],
        target_opset=OPSETS,
        options=options,
    )


def main() -> None:
    warnings.filterwarnings("ignore")  # ConvergenceWarning: the weights need not be converged

    x, y = make_classification(
        n_samples=200, n_features=6, n_informative=4, n_classes=2, random_state=0
    )
    x = x.astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=300, random_state=0).fit(x, y)
    _save(_convert(clf, 6, options={id(clf): {"zipmap": False}}), "sklearn_mlp_binary.onnx")

    x, y = make_classification(
        n_samples=300, n_features=6, n_informative=4, n_classes=3, random_state=1
    )
    x = x.astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=300, random_state=1).fit(x, y)
    _save(_convert(clf, 6), "sklearn_mlp_multiclass_zipmap.onnx")

    x, y = make_regression(n_samples=200, n_features=5, noise=0.1, random_state=2)
    x = (x * 10 + 3).astype(np.float32)
    pipe = Pipeline(
        [
            ("scale", StandardScaler()),
            ("mlp", MLPRegressor(hidden_layer_sizes=(16, 8), max_iter=300, random_state=2)),
        ]
    ).fit(x, y)
    _save(_convert(pipe, 5), "sklearn_pipeline.onnx")


if __name__ == "__main__":
    main()
