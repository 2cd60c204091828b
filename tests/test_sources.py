"""Where flow comes from besides the float inputs (docs/flow_rules.md, "Flow sources"):
learned tokens concatenated beside the data, embedding lookups (tied tables are weight
layers), constant data read by a weight layer, and values computed from integer inputs
(masks), which are data and never flow.

Each hand-built model has a float64 numpy reference of its positive linearization; scores
are checked against central differences of that reference, R against its value.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxflow
from onnxflow.errors import OnnxflowError

F = TensorProto.FLOAT
I64 = TensorProto.INT64


class G:
    """A tiny graph writer: named weights, nodes, one output."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.weights: dict[str, np.ndarray] = {}
        self.n = 0

    def w(self, name: str, shape: tuple[int, ...], scale: float = 0.5) -> str:
        arr = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        self.weights[name] = arr
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def c(self, arr: np.ndarray, name: str | None = None) -> str:
        name = name or f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op: str, *inputs: str, **attrs: object) -> str:
        self.n += 1
        out = f"{op.lower()}{self.n}"
        self.nodes.append(
            helper.make_node(op, list(inputs), [out], name=f"/{op}_{self.n}", **attrs)
        )
        return out

    def model(self, inputs: list[onnx.ValueInfoProto], out: str) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [out], ["output"], name="/out"))
        graph = helper.make_graph(
            self.nodes, "g", inputs, [helper.make_empty_tensor_value_info("output")], self.inits
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 10
        m = onnx.shape_inference.infer_shapes(m)
        return m


def attention(g: G, x: str, d: int, p: str) -> str:
    """One single-head self-attention block with a residual: x + softmax(QK^T/s) V Wo."""
    q = g.op("MatMul", x, g.w(f"{p}.q", (d, d)))
    k = g.op("MatMul", x, g.w(f"{p}.k", (d, d)))
    v = g.op("MatMul", x, g.w(f"{p}.v", (d, d)))
    s = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 2, 1]))
    s = g.op("Softmax", g.op("Mul", s, g.c(np.float32(0.3))), axis=-1)
    o = g.op("MatMul", g.op("MatMul", s, v), g.w(f"{p}.o", (d, d)))
    return g.op("Add", x, o)


def ref_attention(w: dict[str, np.ndarray], x: np.ndarray, p: str) -> np.ndarray:
    q, k, v = (x @ w[f"{p}.{n}"] for n in "qkv")
    return x + ((q @ k.transpose(0, 2, 1)) * 0.3) @ v @ w[f"{p}.o"]


TOKENS, PATCH, D, CLASSES = 4, 6, 8, 3


def class_token_model(cls: np.ndarray | None = None, seed: int = 0) -> tuple[onnx.ModelProto, G]:
    """A ViT in miniature: patch embedding, a class token concatenated before the patches,
    a position embedding added, one attention block, the head reads the class token only."""
    g = G(seed)
    x = g.op("MatMul", "x", g.w("embed", (PATCH, D)))
    token = cls if cls is not None else g.rng.standard_normal((1, 1, D)) * 1e-6
    t = g.op("Concat", g.c(token.astype(np.float32), "cls_token"), x, axis=1)
    t = g.op("Add", t, g.c(g.rng.standard_normal((1, TOKENS + 1, D)).astype(np.float32)))
    t = attention(g, t, D, "blk")
    first = g.op("Gather", t, g.c(np.int64(0)), axis=1)
    y = g.op("MatMul", first, g.w("head", (D, CLASSES)))
    return g.model([helper.make_tensor_value_info("x", F, [1, TOKENS, PATCH])], y), g


def ref_class_token(w: dict[str, np.ndarray], token: float) -> float:
    """The positive linearization: the class token is a source of ones in the unit of the
    patches it joins (`token`: their largest element in the dense network, held fixed like
    a source), the position embedding a bias (dropped), Softmax passes flow."""
    x = np.ones((1, TOKENS, PATCH)) @ w["embed"]
    t = np.concatenate([np.full((1, 1, D), token), x], axis=1)
    t = ref_attention(w, t, "blk")
    return float((t[:, 0] @ w["head"]).sum())


def class_token_ref(g: G) -> Callable[[dict[str, np.ndarray]], float]:
    token = float((np.ones((1, TOKENS, PATCH)) @ _abs(g)["embed"]).max())
    return lambda w: ref_class_token(w, token)


def check_against(
    model: onnx.ModelProto,
    weights: dict[str, np.ndarray],
    ref: Callable[[dict[str, np.ndarray]], float],
    samples: int = 6,
) -> onnxflow.api.ScoreResult:
    """log R and sampled scores against central differences of the float64 reference."""
    result = onnxflow.score(model)
    absw = {n: np.abs(v.astype(np.float64)) for n, v in weights.items()}
    r = ref(absw)
    assert r > 0
    assert result.log_flow == pytest.approx(np.log(r), rel=1e-5, abs=1e-5)
    rng = np.random.default_rng(1)
    for name in weights:
        log_s = result.log_scores[name]
        assert np.isfinite(log_s).all(), name  # every weight scores > 0
        for flat in rng.choice(absw[name].size, samples, replace=False):
            idx = np.unravel_index(flat, absw[name].shape)
            h = 1e-4 * absw[name][idx]
            up = {**absw, name: absw[name].copy()}
            down = {**absw, name: absw[name].copy()}
            up[name][idx] += h
            down[name][idx] -= h
            want = absw[name][idx] * (ref(up) - ref(down)) / (2 * h)
            assert np.exp(log_s[idx]) == pytest.approx(want, rel=2e-3), (name, idx)
    return result


def test_class_token_is_a_flow_source() -> None:
    model, g = class_token_model()
    result = check_against(model, g.weights, class_token_ref(g))
    assert {layer.name for layer in result.dag.layers} == set(g.weights)


def test_class_token_model_prunes_with_every_layer_kept() -> None:
    model, _ = class_token_model()
    pruned = onnxflow.prune(model, sparsity=0.5, iterations=5)
    assert all(m.any() for m in pruned.masks.values())
    assert all(np.isfinite(s).all() for s in pruned.log_scores.values())


def test_zero_initialized_token_is_a_source() -> None:
    """transformers' DeiT initializes its class and distillation tokens to zero: a token is
    a source of ones whatever its values."""
    model, g = class_token_model(cls=np.zeros((1, 1, D)))
    check_against(model, g.weights, class_token_ref(g))


def test_no_path_is_not_blamed_on_zero_weights() -> None:
    """R = 0 with no zero weight (the head reads a selection that picks a constant): the
    message says no path carries flow, not that a zero weight cuts them."""
    g = G()
    h = g.op("MatMul", "x", g.w("a", (4, 3)))
    h = g.op("Where", g.c(np.zeros((1, 3), bool)), h, g.c(np.ones((1, 3), np.float32)))
    y = g.op("MatMul", h, g.w("b", (3, 2)))
    model = g.model([helper.make_tensor_value_info("x", F, [1, 4])], y)
    with pytest.raises(OnnxflowError, match="R = 0") as e:
        onnxflow.prune(model, sparsity=0.5)
    assert "zero weight" not in str(e.value)
    assert "no input-output path carries flow" in str(e.value)


def test_zero_weights_on_every_path_are_named_as_the_cause() -> None:
    g = G()
    h = g.op("MatMul", "x", g.w("a", (4, 3)))
    g.inits.append(numpy_helper.from_array(np.zeros((3, 2), np.float32), "b"))
    y = g.op("MatMul", h, "b")
    model = g.model([helper.make_tensor_value_info("x", F, [1, 4])], y)
    # The paper's strict R blames the zero weight; by default an all-zero weight tensor is
    # read as ones (zero-initialized) and leaves N, so the model prunes.
    with pytest.raises(OnnxflowError, match="crosses a zero weight"):
        onnxflow.prune(model, sparsity=0.5, zero_init="strict")
    result = onnxflow.prune(model, sparsity=0.5)
    assert "b" not in result.masks and result.masks["a"].sum() == 6


V, T, E = 11, 5, 6


def causal_lm(tied: bool = True) -> tuple[onnx.ModelProto, G]:
    """A causal language model in miniature: token embedding (tied to the output projection
    or not), a rotary-style factor and a causal mask computed from the attention mask
    input, one attention block."""
    g = G(3)
    table = g.w("wte", (V, E))
    x = g.op("Gather", table, "ids")
    m = g.op("Cast", "attention_mask", to=F)
    pos = g.op("Sub", g.op("CumSum", m, g.c(np.int64(1))), g.c(np.float32(1.0)))  # (1, T)
    rot = g.op("Unsqueeze", g.op("Cos", pos), g.c(np.array([2], np.int64)))  # (1, T, 1)
    x = g.op("Mul", x, rot)
    # additive mask: -inf above the diagonal or at padding (attention_mask 0), else 0
    later = g.op(
        "Greater",
        g.op("Unsqueeze", pos, g.c(np.array([1], np.int64))),
        g.op("Unsqueeze", pos, g.c(np.array([2], np.int64))),
    )
    pad = g.op("Equal", g.op("Unsqueeze", m, g.c(np.array([1], np.int64))), g.c(np.float32(0)))
    mask = g.op("Where", g.op("Or", later, pad), g.c(np.float32(-np.inf)), g.c(np.float32(0.0)))
    q = g.op("MatMul", x, g.w("blk.q", (E, E)))
    k = g.op("MatMul", x, g.w("blk.k", (E, E)))
    v = g.op("MatMul", x, g.w("blk.v", (E, E)))
    s = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 2, 1]))
    s = g.op("Softmax", g.op("Add", s, mask), axis=-1)
    x = g.op("Add", x, g.op("MatMul", g.op("MatMul", s, v), g.w("blk.o", (E, E))))
    head = g.op("Transpose", table, perm=[1, 0]) if tied else g.w("lm_head", (E, V))
    y = g.op("MatMul", x, head)
    inputs = [
        helper.make_tensor_value_info("ids", I64, [1, T]),
        helper.make_tensor_value_info("attention_mask", I64, [1, T]),
    ]
    return g.model(inputs, y), g


def ref_causal_lm(w: dict[str, np.ndarray], tied: bool = True) -> float:
    """The lookup is one-hot(ids) @ |wte| on an all-ones input (column sums at every
    position); the mask is a bias (dropped) but the causal selection it makes is not
    modelled by the flow: Softmax passes flow and the -inf bias is dropped, so every query
    sees every key; |cos(pos)| on the all-ones attention mask scales the embedding."""
    col = w["wte"].sum(axis=0)
    pos = np.arange(T, dtype=np.float64)
    x = np.abs(np.cos(pos))[None, :, None] * col[None, None, :]
    x = _ref_block(w, x)
    head = w["wte"].T if tied else w["lm_head"]
    return float((x @ head).sum())


def _ref_block(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    q, k, v = (x @ w[f"blk.{n}"] for n in "qkv")
    return x + (q @ k.transpose(0, 2, 1)) @ v @ w["blk.o"]


@pytest.mark.parametrize("tied", [True, False])
def test_causal_lm_masks_are_data_and_the_tied_table_is_one_layer(tied: bool) -> None:
    model, g = causal_lm(tied)
    weights = dict(g.weights)
    if not tied:
        del weights["wte"]  # an untied embedding table is a flow source, not pruned
    result = check_against(model, weights, lambda w: ref_causal_lm({**_abs(g), **w}, tied))
    layers = {layer.name: layer for layer in result.dag.layers}
    assert set(layers) == set(weights)
    if tied:
        assert len(layers["wte"].nodes) == 2  # the lookup and the output projection
        assert layers["wte"].in_axis == 1  # the projection's contracted axis
    pruned = onnxflow.prune(model, sparsity=0.6, iterations=4)
    assert set(pruned.masks) == set(weights)
    assert all(m.any() for m in pruned.masks.values())


def _abs(g: G) -> dict[str, np.ndarray]:
    return {n: np.abs(v.astype(np.float64)) for n, v in g.weights.items()}


def test_constant_data_of_a_weight_layer_is_a_source() -> None:
    """Swin V2's position-bias MLP: a constant coordinate table, shared through an Identity,
    through a first layer (both operands stored: not a weight layer, left dense), then a
    prunable layer whose data is computed from constants only; its output is added to the
    attention logits. The prunable layer reads ones; the logits sum both flows."""
    g = G(5)
    table = g.c(g.rng.standard_normal((1, TOKENS, 3)).astype(np.float32), "coords")
    hidden = g.op("Relu", g.op("MatMul", g.op("Identity", table), g.w("cpb.0", (3, 4))))
    bias = g.op("MatMul", hidden, g.w("cpb.2", (4, TOKENS)))  # (1, T, T)
    x = g.op("MatMul", "x", g.w("embed", (PATCH, D)))
    q = g.op("MatMul", x, g.w("q", (D, D)))
    k = g.op("MatMul", x, g.w("k", (D, D)))
    s = g.op("Add", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 2, 1])), bias)
    y = g.op("MatMul", g.op("MatMul", g.op("Softmax", s, axis=-1), x), g.w("head", (D, 2)))
    model = g.model([helper.make_tensor_value_info("x", F, [1, TOKENS, PATCH])], y)

    def ref(w: dict[str, np.ndarray]) -> float:
        x = np.ones((1, TOKENS, PATCH)) @ w["embed"]
        s = (x @ w["q"]) @ (x @ w["k"]).transpose(0, 2, 1) + np.ones((1, TOKENS, 4)) @ w["cpb.2"]
        return float((s @ x @ w["head"]).sum())

    weights = {n: v for n, v in g.weights.items() if n != "cpb.0"}
    result = check_against(model, weights, ref)
    assert "cpb.0" not in {layer.name for layer in result.dag.layers}


def test_gather_at_indices_computed_from_the_ids() -> None:
    """CLIP's text pooling: the hidden state at the argmax of the ids (computed when the
    flow model runs, on the all-ones ids: position 0)."""
    g = G(7)
    x = g.op("Gather", g.c(g.rng.standard_normal((V, E)).astype(np.float32), "emb"), "ids")
    x = g.op("MatMul", x, g.w("proj", (E, E)))  # (1, T, E)
    where = g.op("ArgMax", "ids", axis=1, keepdims=0)  # (1,)
    pooled = g.op("Gather", g.op("Squeeze", x, g.c(np.array([0], np.int64))), where, axis=0)
    y = g.op("MatMul", pooled, g.w("head", (E, 2)))
    model = g.model([helper.make_tensor_value_info("ids", I64, [1, T])], y)
    emb = np.abs(numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "emb")))

    def ref(w: dict[str, np.ndarray]) -> float:
        x = np.broadcast_to(emb.sum(axis=0), (T, E)) @ w["proj"]
        return float((x[[0]] @ w["head"]).sum())

    result = check_against(model, g.weights, ref)
    assert np.isfinite(result.log_flow)


def test_exported_transposed_copy_of_a_tied_table_shares_its_mask() -> None:
    """Constant folding stores GPT-2's tied output projection as a second tensor, the
    transpose of the token table: it is re-tied, one layer, one mask written to both."""
    g = G(11)
    table = g.w("wte", (V, E))
    g.c(g.weights["wte"].T.copy(), "wte_T")
    x = g.op("Gather", table, "ids")
    x = g.op("MatMul", x, g.w("mlp", (E, E)))
    y = g.op("MatMul", x, "wte_T")
    model = g.model([helper.make_tensor_value_info("ids", I64, [1, T])], y)
    dense = onnxflow.score(model)
    assert [layer.name for layer in dense.dag.layers] == ["wte", "mlp"]
    assert dense.dag.copies == {"wte_T": ("wte", (1, 0))}
    assert np.isfinite(dense.log_scores["wte"]).all()
    pruned = onnxflow.prune(model, sparsity=0.5, iterations=2)
    stored = {t.name: numpy_helper.to_array(t) for t in pruned.model.graph.initializer}
    assert (stored["wte"] == 0).any()
    np.testing.assert_array_equal(stored["wte_T"], stored["wte"].T)


def test_slice_bounds_computed_from_the_ids() -> None:
    """A Slice whose end is computed from an integer input (the count of attended tokens,
    all T on the all-ones mask, minus one): its index map is the same Slice of the input's
    flat positions, made when the flow model runs."""
    g = G(13)
    x = g.op("MatMul", "x", g.w("a", (PATCH, E)))  # (1, T, E)
    end = g.op("Sub", g.op("ReduceSum", "attention_mask", keepdims=0), g.c(np.int64(1)))
    end = g.op("Unsqueeze", end, g.c(np.array([0], np.int64)))
    part = g.op("Slice", x, g.c(np.array([0], np.int64)), end, g.c(np.array([1], np.int64)))
    y = g.op("MatMul", part, g.w("b", (E, 2)))
    inputs = [
        helper.make_tensor_value_info("x", F, [1, T, PATCH]),
        helper.make_tensor_value_info("attention_mask", I64, [1, T]),
    ]
    model = g.model(inputs, y)
    model.graph.value_info.clear()  # the sliced length is known only from a run

    def ref(w: dict[str, np.ndarray]) -> float:
        return float((np.ones((T - 1, PATCH)) @ w["a"] @ w["b"]).sum())

    check_against(model, g.weights, ref)


HERE = Path(__file__).resolve().parent / "exported"
EXPORTS = {  # file: what it covers (tests/exported/make_sources_models.py)
    "hf_vit.onnx": "class token, head on token 0 (TorchScript)",
    "hf_deit_dynamo.onnx": "zero-initialized class and distillation tokens (dynamo)",
    "gpt2_torchscript.onnx": "tied wte, masks from attention_mask (TorchScript)",
    "gpt2_dynamo.onnx": "tied wte, masks from attention_mask (dynamo)",
    "llama_dynamo.onnx": "rotary tables and causal mask from positions (dynamo)",
    "clip_text.onnx": "pooling at the argmax of the ids (TorchScript)",
}


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_real_exports_prune_with_every_weight_scored(name: str) -> None:
    """Each was refused before (R = 0, non-finite flow, computed gather indices): now R > 0,
    no weight scores 0, and the pruned model runs with the original's output shapes."""
    path = HERE / name
    dense = onnxflow.score(path)
    assert np.isfinite(dense.log_flow)
    for layer, s in dense.log_scores.items():
        assert np.isfinite(s).all(), layer
    pruned = onnxflow.prune(path, sparsity=0.5, iterations=3)
    original = onnx.load(path)
    feeds = {
        i.name: np.ones([d.dim_value or 1 for d in i.type.tensor_type.shape.dim],
                        helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
        for i in original.graph.input
    }  # fmt: skip
    want = ort.InferenceSession(original.SerializeToString()).run(None, feeds)
    got = ort.InferenceSession(pruned.model.SerializeToString()).run(None, feeds)
    assert [w.shape for w in want] == [x.shape for x in got]
    assert all(np.isfinite(x).all() for x in got)
    if name.startswith("gpt2"):
        ((copy, (table, perm)),) = dense.dag.copies.items()
        assert table in {layer.name for layer in dense.dag.layers}
        stored = {t.name: numpy_helper.to_array(t) for t in pruned.model.graph.initializer}
        np.testing.assert_array_equal(stored[copy], stored[table].transpose(perm))


def test_tied_table_excluded_still_carries_its_flow() -> None:
    """With the tied table excluded, its lookup is a source and the re-tied projection
    reads Transpose(E), which the flow model computes: |E^T|, not pruned."""
    g = G(17)
    table = g.w("wte", (V, E))
    g.c(g.weights["wte"].T.copy(), "wte_T")
    x = g.op("MatMul", g.op("Gather", table, "ids"), g.w("mlp", (E, E)))
    model = g.model([helper.make_tensor_value_info("ids", I64, [1, T])], g.op("MatMul", x, "wte_T"))
    pruned = onnxflow.prune(model, sparsity=0.5, iterations=2, exclude=("wte",))
    assert set(pruned.masks) == {"mlp"}
    assert all(np.isfinite(s).all() for s in pruned.log_scores.values())
