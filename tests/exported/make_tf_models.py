"""Export the small Keras models in this folder with tf2onnx (needs tensorflow, tf-keras, tf2onnx).

    pip install tensorflow tf-keras tf2onnx onnx   # in a separate virtualenv
    python tests/exported/make_tf_models.py

Written with tensorflow 2.21.0, tf-keras 2.21.0, tf2onnx 1.17.0, opset 17. tf2onnx's
``from_keras`` does not handle Keras 3 models (KeyError on the output name), so the models are
built with the legacy Keras 2 package ``tf_keras`` (the script sets TF_USE_LEGACY_KERAS).

- ``keras_cnn.onnx``: NHWC input (1, 16, 16, 3), transposed to NCHW once at the input.
  Conv2D + BatchNormalization + ReLU6 (BN folded into the conv, ReLU6 written as Clip),
  DepthwiseConv2D + BN (folded, group=8 Conv) + hard_sigmoid (written out as
  Mul/Add/Min/Max with constants), SeparableConv2D (depthwise Conv + 1x1 Conv) + BN (kept as
  BatchNormalization) + swish (x * Sigmoid(x)), a residual Add, a strided 1x1 Conv +
  tf.nn.silu, GlobalAveragePool + Squeeze, Dense + softmax (Gemm + Softmax).
- ``keras_mlp.onnx``: Dense layers only (MatMul + Add, Relu, Tanh), dynamic batch.

BatchNorm statistics and biases are random, not trivial. The .onnx files are committed so
the tests need no framework.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
import tf_keras as keras
from tf_keras import layers

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


def _stable_names(proto: onnx.ModelProto) -> None:
    """tf2onnx suffixes the names it makes (folded constants, inserted Transposes and
    Squeezes, free dimensions) with a global counter, `__N`, whose values differ from run to
    run. Renumber the counters in order of first appearance and sort the initializers, so
    that the export is byte-for-byte reproducible; the graph is unchanged."""
    graph = proto.graph
    value_infos = [*graph.input, *graph.output]
    seen: list[str] = []
    for vi in value_infos:
        seen.append(vi.name)
        seen.extend(d.dim_param for d in vi.type.tensor_type.shape.dim)
    for node in graph.node:
        seen.extend([node.name, *node.input, *node.output])
    numbers: dict[str, str] = {}
    for text in seen:
        for n in re.findall(r"__(\d+)", text):
            numbers.setdefault(n, str(len(numbers)))

    def rename(text: str) -> str:
        return re.sub(r"__(\d+)", lambda m: "__" + numbers.get(m.group(1), m.group(1)), text)

    for vi in value_infos:
        vi.name = rename(vi.name)
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = rename(d.dim_param)
    for node in graph.node:
        node.name = rename(node.name)
        node.input[:] = [rename(t) for t in node.input]
        node.output[:] = [rename(t) for t in node.output]
    inits = sorted(graph.initializer, key=lambda t: rename(t.name))
    for t in inits:
        t.name = rename(t.name)
    graph.ClearField("initializer")
    graph.initializer.extend(inits)
    graph.ClearField("value_info")  # intermediate shapes: not needed, names would differ


def _export(model: keras.Model, name: str, shape: tuple[int | None, ...]) -> None:
    spec = (tf.TensorSpec(shape, tf.float32, name=model.inputs[0].name.split(":")[0]),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    _stable_names(proto)
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
