"""Export the small Keras models in this folder with tf2onnx (needs tensorflow, tf-keras, tf2onnx).

    TF_USE_LEGACY_KERAS=1 python tests/exported/make_tf_models.py

Written with tensorflow-cpu 2.21.0, tf-keras 2.21.0, tf2onnx 1.17.0. tf2onnx's
``from_keras`` does not handle Keras 3 models (KeyError on the output name), so the models are
built with the legacy Keras 2 package ``tf_keras`` (the script sets TF_USE_LEGACY_KERAS itself).

- ``keras_cnn.onnx``: NHWC input (1, 16, 16, 3). tf2onnx puts Transposes around the convs,
  folds BatchNormalization into them, writes ReLU6 as Clip, Dense as MatMul + Add.
- ``keras_mlp.onnx``: Dense layers only, dynamic batch.

The .onnx files are committed so the tests need no framework.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
import tf_keras as keras  # noqa: E402
from tf_keras import layers  # noqa: E402

HERE = Path(__file__).resolve().parent
OPSET = 17


def _randomize(model: keras.Model, rng: np.random.Generator) -> None:
    """Non-trivial BatchNorm statistics and non-zero biases (zero biases are optimized away)."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.normal(1.0, 0.3, gamma.shape).astype(np.float32),
                    rng.normal(0.0, 0.3, beta.shape).astype(np.float32),
                    rng.normal(0.0, 0.5, mean.shape).astype(np.float32),
                    rng.uniform(0.5, 2.0, var.shape).astype(np.float32),
                ]
            )
        elif getattr(layer, "use_bias", False) and layer.weights:
            weights = layer.get_weights()
            weights[-1] = rng.normal(0.0, 0.1, weights[-1].shape).astype(np.float32)
            layer.set_weights(weights)


def keras_cnn() -> keras.Model:
    """Conv-BN-ReLU6, depthwise + hard-sigmoid, separable + swish, residual add, GAP head."""
    inp = keras.Input((16, 16, 3), batch_size=1, name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    x = layers.BatchNormalization()(x)
    stem = layers.ReLU(max_value=6.0)(x)
    y = layers.DepthwiseConv2D(3, padding="same")(stem)
    y = layers.BatchNormalization()(y)
    y = layers.Activation("hard_sigmoid")(y)
    y = layers.SeparableConv2D(8, 3, padding="same")(y)
    y = layers.BatchNormalization()(y)
    y = layers.Activation("swish")(y)
    x = layers.Add()([stem, y])
    x = layers.Conv2D(16, 1, strides=2)(x)
    x = layers.Lambda(tf.nn.silu)(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(5, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="keras_cnn")


def keras_mlp() -> keras.Model:
    inp = keras.Input((10,), name="features")
    x = layers.Dense(32, activation="relu")(inp)
    x = layers.Dense(16, activation="tanh")(x)
    out = layers.Dense(4, name="logits")(x)
    return keras.Model(inp, out, name="keras_mlp")


def _export(model: keras.Model, name: str, shape: tuple[int | None, ...]) -> None:
    spec = (tf.TensorSpec(shape, tf.float32, name=model.inputs[0].name.split(":")[0]),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    proto.ir_version = min(proto.ir_version, 10)  # onnxruntime refuses newer IR versions
    proto.producer_version = tf2onnx.__version__  # drop the git hash suffix
    onnx.checker.check_model(proto)
    path = HERE / name
    onnx.save(proto, path)
    print(f"wrote {path.relative_to(HERE.parent.parent)} ({path.stat().st_size / 1024:.0f} KiB)")


def main() -> None:
    warnings.filterwarnings("ignore")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)

    cnn = keras_cnn()
    _randomize(cnn, rng)
    _export(cnn, "keras_cnn.onnx", (1, 16, 16, 3))

    mlp = keras_mlp()
    _randomize(mlp, rng)
    _export(mlp, "keras_mlp.onnx", (None, 10))


if __name__ == "__main__":
    main()
