"""Flow rules for normalization by division, ratios of flows, recurrent cells and the rest of
the default-domain operator set, against brute force (test_rules.py explains the method:
one-hot weights through onnxruntime on a hand-written positive linearization, or float64
references where R is not linear in a weight)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_linearize import assert_same_scores, model
from test_rules_linear import Net, check, prune_scores

import onnxflow

Op = Callable[[Net, str], str]

# ---- normalization by division, spelled out by exporters ------------------------------------


def _consts(**values: float) -> dict[str, np.ndarray]:
    return {k: np.array(v, np.float32) for k, v in values.items()}


def _scale_only() -> onnx.ModelProto:
    return model([helper.make_node("Mul", ["h", "gamma"], ["n"])], {})


def _norm_spellings() -> dict[str, tuple[list[onnx.NodeProto], dict[str, np.ndarray]]]:
    """h -> [nodes] -> n = gamma * h / stat(h), as exporters write RMSNorm and F.normalize."""
    axes = {"axes": np.array([-1], np.int64), "shape": np.array([1, 4, 8], np.int64)}
    c = {**_consts(two=2.0, eps=1e-6, one=1.0, minus_half=-0.5), **axes}
    gamma = [helper.make_node("Mul", ["gamma", "norm"], ["n"])]
    return {
        # T5 (TorchScript): h * (1 / sqrt(mean(h^2) + eps)) after a float cast
        "t5_reciprocal_by_div": (
            [
                helper.make_node("Cast", ["h"], ["hc"], to=TensorProto.FLOAT),
                helper.make_node("Pow", ["hc", "two"], ["sq"]),
                helper.make_node("ReduceMean", ["sq", "axes"], ["ms"]),
                helper.make_node("Add", ["ms", "eps"], ["me"]),
                helper.make_node("Sqrt", ["me"], ["rms"]),
                helper.make_node("Div", ["one", "rms"], ["inv"]),
                helper.make_node("Mul", ["hc", "inv"], ["norm"]),
                *gamma,
            ],
            c,
        ),
        # LLaMA-style rsqrt as Reciprocal(Sqrt), product written the other way round
        "rsqrt_reciprocal": (
            [
                helper.make_node("Mul", ["h", "h"], ["sq"]),
                helper.make_node("ReduceMean", ["sq", "axes"], ["ms"]),
                helper.make_node("Add", ["ms", "eps"], ["me"]),
                helper.make_node("Sqrt", ["me"], ["rms"]),
                helper.make_node("Reciprocal", ["rms"], ["inv"]),
                helper.make_node("Mul", ["inv", "h"], ["norm"]),
                *gamma,
            ],
            c,
        ),
        # (mean(h^2) + eps) ** -0.5
        "pow_minus_half": (
            [
                helper.make_node("Pow", ["h", "two"], ["sq"]),
                helper.make_node("ReduceMean", ["sq", "axes"], ["ms"]),
                helper.make_node("Add", ["ms", "eps"], ["me"]),
                helper.make_node("Pow", ["me", "minus_half"], ["inv"]),
                helper.make_node("Mul", ["h", "inv"], ["norm"]),
                *gamma,
            ],
            c,
        ),
        # F.normalize: h / Expand(Clip(ReduceL2(h), eps), shape)
        "f_normalize_expand_clip": (
            [
                helper.make_node("ReduceL2", ["h", "axes"], ["l2"], keepdims=1),
                helper.make_node("Clip", ["l2", "eps", ""], ["cl"]),
                helper.make_node("Expand", ["cl", "shape"], ["ex"]),
                helper.make_node("Div", ["h", "ex"], ["norm"]),
                *gamma,
            ],
            c,
        ),
        # ConViT: h / Unsqueeze(ReduceSum(h, keepdims=0)), eps by Max
        "unsqueeze_max_eps": (
            [
                helper.make_node("ReduceSum", ["h", "axes"], ["s"], keepdims=0),
                helper.make_node("Max", ["s", "eps"], ["sm"]),
                helper.make_node("Unsqueeze", ["sm", "axes"], ["su"]),
                helper.make_node("Div", ["h", "su"], ["norm"]),
                *gamma,
            ],
            c,
        ),
    }


@pytest.mark.parametrize("spelling", list(_norm_spellings()))
def test_normalization_by_a_statistic_scores_like_its_scale(spelling: str) -> None:
    nodes, consts = _norm_spellings()[spelling]
    assert_same_scores(model(nodes, consts, opset=18), _scale_only())


def test_normalization_spellings_leave_no_division_in_the_analysis_graph() -> None:
    from onnxflow.api import analysis_passes, initial_state, make_options

    for spelling, (nodes, consts) in _norm_spellings().items():
        state = initial_state(model(nodes, consts, opset=18), make_options(sparsity=0.5))
        for p in analysis_passes():
            state = p(state)
        assert state.graph is not None
        ops = {n.op for n in state.graph.nodes}
        assert not ops & {"Div", "Reciprocal", "ReduceL2", "ReduceMean", "Pow"}, spelling


def _const_over_flow(net: Net, y: str) -> str:
    c = net.signed((1, 3, 1, 1))
    if net.ref:
        return net.op("Mul", y, net.const(np.abs(c)))
    return net.op("Div", net.const(c), y)


@pytest.mark.parametrize("op", [_const_over_flow], ids=["const_over_flow"])
def test_division_rules(op: Op) -> None:
    def build(net: Net) -> onnx.ModelProto:
        return net.model(net.post(op(net, net.pad_conv("x", 3))))

    check(build, (1, 2, 6, 6))


def test_ratio_of_two_flows_passes_the_numerator() -> None:
    """Linear attention (EfficientViT) and ConViT's gating divide one flow by another: the
    numerator's weights score as if the denominator were absent, the denominator's weight
    (reaching the output only through the ratio) scores zero."""

    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        den = net.pad_conv("x", 3)
        z = y if net.ref else net.op("Div", y, den)
        return net.model(net.post(z))

    net = Net((1, 2, 6, 6), ref=False)
    got = prune_scores(build(net))
    ref_net = Net((1, 2, 6, 6), ref=True)
    ref = build(ref_net)
    from test_rules import assert_log_scores_equal, brute_force_log_scores

    for name in ("W0", "W2"):
        assert_log_scores_equal(got[name], brute_force_log_scores(ref, name), name)
    assert np.isneginf(got["W1"]).all()


# ---- recurrent cells -------------------------------------------------------------------------


def cell_reference(op: str, xs: np.ndarray, w: np.ndarray, r: np.ndarray, **kw: Any):
    """The documented linearized recurrence (passes/recurrent.py), float64, unrolled in numpy:
    Y [T, D, B, H], Y_h and Y_c [D, B, H] for inputs X [T, B, I] and |W|, |R|."""
    dirs, hidden = kw["dirs"], r.shape[-1]
    p, h0 = kw.get("peep"), kw.get("h0")
    steps = xs.shape[0]
    y = np.zeros((steps, len(dirs), xs.shape[1], hidden))
    yh, yc = np.zeros(y.shape[1:]), np.zeros(y.shape[1:])
    for d, direction in enumerate(dirs):
        h = None if h0 is None else h0[d]
        c = None
        for t in range(steps)[:: -1 if direction == "reverse" else 1]:
            gx = np.split(xs[t] @ w[d].T, w.shape[1] // hidden, axis=-1)
            gr = np.split(h @ r[d].T, w.shape[1] // hidden, axis=-1) if h is not None else None
            if op == "RNN":
                h = gx[0] + (gr[0] if gr else 0)
            elif op == "GRU":
                z = gx[0] + (gr[0] if gr else 0)
                rr = gx[1] + (gr[1] if gr else 0)
                if h is None:
                    n = gx[2]
                elif kw.get("linear_before_reset"):
                    n = gx[2] + rr + gr[2]
                else:
                    n = gx[2] + np.split((rr + h) @ r[d].T, 3, axis=-1)[2]
                h = z + n + (z + h if h is not None else 0)
            else:
                i, o, f, cc = (gx[k] + (gr[k] if gr else 0) for k in range(4))
                if p is not None and c is not None:
                    i = i + p[d, :hidden] * c
                    f = f + p[d, 2 * hidden :] * c
                if kw.get("input_forget"):
                    i = f
                c = (f + c if c is not None else 0) + i + cc
                if p is not None:
                    o = o + p[d, hidden : 2 * hidden] * c
                h = o + c
            y[t, d] = h
        yh[d] = h
        yc[d] = c if c is not None else 0
    return y, yh, yc


CELLS = {
    # id: (op, direction, attrs, extras)
    "rnn_forward": ("RNN", "forward", {}, {}),
    "rnn_bidirectional": ("RNN", "bidirectional", {}, {}),
    "rnn_reverse_layout1": ("RNN", "reverse", {"layout": 1}, {}),
    "gru_bidirectional": ("GRU", "bidirectional", {}, {}),
    "gru_linear_before_reset": ("GRU", "bidirectional", {"linear_before_reset": 1}, {}),
    "gru_initial_state_flow": ("GRU", "forward", {}, {"h0": True}),
    "lstm_forward": ("LSTM", "forward", {}, {}),
    "lstm_bidirectional_layout1": ("LSTM", "bidirectional", {"layout": 1}, {}),
    "lstm_peepholes_initial_state": ("LSTM", "bidirectional", {}, {"peep": True, "h0": True}),
    "lstm_input_forget": ("LSTM", "reverse", {"input_forget": 1}, {}),
}


def _cell_model(case: str, seed: int = 0):
    """x -> x * cx (time-varying constant) -> cell -> Y * cy, Y_h, Y_c as outputs; returns
    the model and the float64 pieces of its linearization."""
    op, direction, attrs, extras = CELLS[case]
    rng = np.random.default_rng(seed)
    steps, batch, feat, hidden = 4, 2, 3, 2
    nd = 2 if direction == "bidirectional" else 1
    gh = {"RNN": 1, "GRU": 3, "LSTM": 4}[op] * hidden
    layout = attrs.get("layout", 0)
    x_shape = (batch, steps, feat) if layout else (steps, batch, feat)
    state_shape = (batch, nd, hidden) if layout else (nd, batch, hidden)
    signed = lambda *s: rng.uniform(0.5, 1.5, s) * rng.choice([-1.0, 1.0], s)  # noqa: E731
    w, r, b = signed(nd, gh, feat), signed(nd, gh, hidden), signed(nd, 2 * gh)
    w[0, 1, 2] = 0.0
    cx, cy = rng.uniform(0.5, 2.0, x_shape), rng.uniform(0.5, 2.0, (steps, nd, batch, hidden))
    if layout:
        cy = cy.transpose(2, 0, 1, 3)
    inits = {"W": w, "R": r, "B": b, "cx": cx, "cy": cy}
    cell_inputs = ["xs", "W", "R", "B", "", "", "", ""]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))]
    if extras.get("h0"):
        cell_inputs[5] = "h0"
        inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, list(state_shape)))
    if op == "LSTM":
        inits["c0"] = signed(*state_shape)  # a constant initial cell: a shift
        cell_inputs[6] = "c0"
    if extras.get("peep"):
        inits["P"] = signed(nd, 3 * hidden)
        cell_inputs[7] = "P"
    while cell_inputs[-1] == "":
        cell_inputs.pop()
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    nodes = [
        helper.make_node("Mul", ["x", "cx"], ["xs"]),
        helper.make_node(op, cell_inputs, outs, hidden_size=hidden, direction=direction, **attrs),
        helper.make_node("Mul", ["Y", "cy"], ["out"]),
    ]
    out_vi = [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(cy.shape))] + [
        helper.make_tensor_value_info(o, TensorProto.FLOAT, list(state_shape)) for o in outs[1:]
    ]
    graph = helper.make_graph(
        nodes,
        "cell",
        inputs,
        out_vi,
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 10
    dirs = ["forward", "reverse"] if nd == 2 else [direction]
    xs = np.abs(cx).astype(np.float32).astype(np.float64)
    if layout:
        xs = xs.transpose(1, 0, 2)
    cyf = np.abs(cy).astype(np.float32).astype(np.float64)
    if layout:
        cyf = cyf.transpose(1, 2, 0, 3)
    kw = dict(dirs=dirs, linear_before_reset=attrs.get("linear_before_reset", 0))
    kw["input_forget"] = attrs.get("input_forget", 0)
    if extras.get("peep"):
        kw["peep"] = np.abs(inits["P"]).astype(np.float32).astype(np.float64)
    if extras.get("h0"):
        kw["h0"] = np.ones((nd, batch, hidden))

    def total(aw: np.ndarray, ar: np.ndarray) -> float:
        y, yh, yc = cell_reference(op, xs, aw, ar, **kw)
        return float((y * cyf).sum() + yh.sum() + (yc.sum() if op == "LSTM" else 0.0))

    f32 = lambda a: np.abs(a).astype(np.float32).astype(np.float64)  # noqa: E731
    return m, f32(w), f32(r), total


def _central_log_scores(a: np.ndarray, f: Callable[[np.ndarray], float]) -> np.ndarray:
    grad = np.zeros(a.size)
    for e in range(a.size):
        step = np.zeros(a.size)
        step[e] = 1e-4
        grad[e] = (f(a + step.reshape(a.shape)) - f(a - step.reshape(a.shape))) / 2e-4
    with np.errstate(divide="ignore"):
        return np.log(a.ravel() * grad).reshape(a.shape)


@pytest.mark.parametrize("case", list(CELLS))
def test_recurrent_cell_against_unrolled_reference(case: str) -> None:
    m, aw, ar, total = _cell_model(case)
    result = onnxflow.score(m)
    assert sorted(result.log_scores) == ["R", "W"]
    want_w = _central_log_scores(aw, lambda v: total(v, ar))
    want_r = _central_log_scores(ar, lambda v: total(aw, v))
    for name, want in (("W", want_w), ("R", want_r)):
        got = result.log_scores[name]
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=name)
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], atol=2e-5, rtol=0, err_msg=name)
    assert result.log_flow == pytest.approx(np.log(total(aw, ar)), abs=2e-5)


def test_pruned_recurrent_cell_equals_the_original_with_masks() -> None:
    import onnxruntime as ort

    m, *_ = _cell_model("lstm_peepholes_initial_state")
    result = onnxflow.prune(m, sparsity=0.5, iterations=2)
    assert (
        0.4
        < sum(int(k.sum()) for k in result.masks.values())
        / sum(k.size for k in result.masks.values())
        < 0.6
    )
    masked = onnx.ModelProto()
    masked.CopyFrom(m)
    for init in masked.graph.initializer:
        if init.name in result.masks:
            arr = numpy_helper.to_array(init) * result.masks[init.name]
            init.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), init.name))
    feeds = {
        "x": np.random.default_rng(1).normal(size=(4, 2, 3)).astype(np.float32),
        "h0": np.random.default_rng(2).normal(size=(2, 2, 2)).astype(np.float32),
    }
    run = lambda mp: ort.InferenceSession(  # noqa: E731
        mp.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, feeds)
    for a, b in zip(run(result.model), run(masked), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# ---- more ops: data movement against brute force ---------------------------------------------


def _ints(net: Net, v: Any) -> str:
    return net.ints(v)


def _col2im(image: list[int], **attrs: Any) -> Op:
    def op(net: Net, y: str) -> str:
        c = net.shape(y)[1]
        cols = net.op("Reshape", y, net.ints([1, c * 4, 9]))
        return net.op("Col2Im", cols, net.ints(image), net.ints([2, 2]), **attrs)

    return op


def _scatter_nd(net: Net, y: str) -> str:
    upd = net.op("Reshape", net.pad_conv("x", 2), net.ints([2, 6, 6]))
    return net.op("ScatterND", y, net.ints([[0, 0], [0, 2]]), upd)


def _scatter_nd_add_const_updates(net: Net, y: str) -> str:
    upd = net.bias((2, 6, 6))
    return net.op("ScatterND", y, net.ints([[0, 0], [0, 0]]), upd, reduction="add")


def _scatter_elements(net: Net, y: str) -> str:
    upd = net.op("Slice", net.pad_conv("x", 3), net.ints([0]), net.ints([1]), net.ints([1]))
    idx = np.tile(np.array([2, 0, 1, 2, 0, 1], np.int64), (1, 1, 6, 1))
    return net.op("ScatterElements", y, net.ints(idx), upd, axis=1)


LINEAR_OPS: dict[str, Op] = {
    "trilu_upper": lambda net, y: net.op("Trilu", y),
    "trilu_lower_k1": lambda net, y: net.op("Trilu", y, net.ints(1), upper=0),
    "reverse_sequence": lambda net, y: net.op(
        "ReverseSequence", y, net.ints([2]), batch_axis=0, time_axis=1
    ),
    "center_crop_pad": lambda net, y: net.op("CenterCropPad", y, net.ints([1, 3, 4, 8])),
    "compress_axis2": lambda net, y: net.op(
        "Compress", y, net.const(np.array([1, 0, 1, 1, 0, 1], bool)), axis=2
    ),
    "gather_nd": lambda net, y: net.op("GatherND", y, net.ints([[0, 1], [0, 2], [0, 1]])),
    "gather_nd_points": lambda net, y: net.op(
        "GatherND", y, net.ints([[0, 1, 2, 3], [0, 0, 5, 5]])
    ),
    "scatter_nd": _scatter_nd,
    "scatter_nd_add_bias": _scatter_nd_add_const_updates,
    "scatter_elements": _scatter_elements,
    "col2im_overlapping": _col2im([4, 4]),
    "col2im_stride2_pads": _col2im([5, 5], strides=[2, 2], pads=[1, 1, 1, 1]),
    "col2im_dilation2": _col2im([5, 5], dilations=[2, 2]),
    "reduce_log_sum_exp": lambda net, y: net.op(
        "ReduceSum" if net.ref else "ReduceLogSumExp", y, net.ints([2]), keepdims=1
    ),
}


@pytest.mark.parametrize("case", list(LINEAR_OPS))
def test_data_movement_ops(case: str) -> None:
    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        z = LINEAR_OPS[case](net, y)
        return net.model(net.post(z) if len(net.shape(z)) >= 2 else z)

    check(build, (1, 2, 6, 6), opset=18)


@pytest.mark.parametrize(
    "op, attrs",
    [
        ("Sin", {}),
        ("Atan", {}),
        ("Shrink", {"lambd": 0.1}),
        ("LpNormalization", {"axis": 1}),
        ("MeanVarianceNormalization", {}),
    ],
)
def test_more_pass_through_ops(op: str, attrs: dict[str, Any]) -> None:
    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        z = y if net.ref else net.op(op, y, **attrs)
        return net.model(net.post(z))

    check(build, (1, 2, 6, 6), opset=18)


def test_sign_ends_the_flow() -> None:
    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        return net.model(net.post(y), net.op("Sign", y))

    net = Net((1, 2, 6, 6), ref=False)
    got = prune_scores(build(net))
    ref = build(Net((1, 2, 6, 6), ref=True))
    ref.graph.output.pop()  # the sign output carries no flow
    from test_rules import assert_log_scores_equal, brute_force_log_scores

    for name in ("W0", "W1"):
        assert_log_scores_equal(got[name], brute_force_log_scores(ref, name), name)


def test_max_unpool_only_moves_flow() -> None:
    def build(unpool: bool) -> onnx.ModelProto:
        net = Net((1, 2, 6, 6), ref=False, seed=4)
        y = net.pad_conv("x", 3)
        p, idx = net.op("MaxPool", y, n_out=2, kernel_shape=[2, 2], strides=[2, 2])
        if unpool:
            p = net.op("MaxUnpool", p, idx, kernel_shape=[2, 2], strides=[2, 2])
        return net.model(net.op("ReduceSum", p, net.ints([2, 3]), keepdims=0))

    a, b = onnxflow.score(build(True)), onnxflow.score(build(False))
    assert a.log_flow == pytest.approx(b.log_flow, abs=1e-6)
    np.testing.assert_allclose(a.log_scores["W0"], b.log_scores["W0"], atol=1e-6)


# ---- norms: float64 references -----------------------------------------------------------------


def _norm_model(op: str, **attrs: Any):
    """x (1, 4, 6) -> MatMul W0 (6, 5) -> op -> MatMul W1 -> y; returns the model and |W|."""
    rng = np.random.default_rng(5)
    last = {"GlobalLpPool": 1, "LpPool": 4}.get(op, 5)
    rows = 4 if op in ("LpPool", "GlobalLpPool") else 1
    w0 = rng.uniform(0.5, 1.5, (6, 5)) * rng.choice([-1, 1], (6, 5))
    w1 = rng.uniform(0.5, 1.5, (last, 3)) * rng.choice([-1, 1], (last, 3))
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["h"])]
    if op in ("LpPool", "GlobalLpPool"):
        nodes.append(helper.make_node(op, ["h"], ["n"], **attrs))
    else:
        nodes.append(helper.make_node(op, ["h", "axes"], ["n"], keepdims=1))
    nodes.append(helper.make_node("MatMul", ["n", "W1"], ["y"]))
    inits = {"W0": w0, "W1": w1, "axes": np.array([1], np.int64)}
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, rows, 3])],
        [
            numpy_helper.from_array(v.astype(np.int64 if k == "axes" else np.float32), k)
            for k, v in inits.items()
        ],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    f64 = lambda a: np.abs(a).astype(np.float32).astype(np.float64)  # noqa: E731
    return m, f64(w0), f64(w1)


def _np_norm(op: str, h: np.ndarray, p: int = 2) -> np.ndarray:
    if op == "ReduceL2":
        return np.sqrt((h**2).sum(axis=1, keepdims=True))
    if op == "ReduceSumSquare":
        return (h**2).sum(axis=1, keepdims=True)
    if op == "GlobalLpPool":
        return (h**p).sum(axis=2, keepdims=True) ** (1 / p)
    # LpPool, kernel 2 stride 1 along the last axis of (1, 4, 5)
    return (h[:, :, :-1] ** p + h[:, :, 1:] ** p) ** (1 / p)


@pytest.mark.parametrize(
    "op, attrs",
    [
        ("ReduceL2", {}),
        ("ReduceSumSquare", {}),
        ("GlobalLpPool", {"p": 3}),
        ("LpPool", {"kernel_shape": [2], "p": 2}),
        ("LpPool", {"kernel_shape": [2], "p": 3}),
    ],
)
def test_norms_against_float64_reference(op: str, attrs: dict[str, Any]) -> None:
    m, a0, a1 = _norm_model(op, **attrs)
    p = attrs.get("p", 2)
    if op == "LpPool":  # pools the last axis: W1 acts on the pooled length 4
        a1 = a1[:4]
        m.graph.initializer[1].CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(m.graph.initializer[1])[:4].copy(), "W1")
        )
    x = np.ones((1, 4, 6))

    def total(w0: np.ndarray, w1: np.ndarray) -> float:
        return float((_np_norm(op, x @ w0, p) @ w1).sum())

    got = onnxflow.score(m)
    for name, want in (
        ("W0", _central_log_scores(a0, lambda v: total(v, a1))),
        ("W1", _central_log_scores(a1, lambda v: total(a0, v))),
    ):
        np.testing.assert_allclose(got.log_scores[name], want, atol=1e-4, rtol=0, err_msg=name)


# ---- the operator list -------------------------------------------------------------------------


def test_every_default_domain_op_has_a_rule_or_a_documented_refusal() -> None:
    from pathlib import Path

    import onnx.defs

    from onnxflow.flow.registry import registered_ops
    from onnxflow.flow.rules.coverage import REFUSED
    from onnxflow.passes.recurrent import RECURRENT

    ops = {
        s.name
        for s in onnx.defs.get_all_schemas_with_history()
        if s.domain == "" and s.since_version <= 21
    }
    registered = {op for domain, op in registered_ops() if domain == ""}
    missing = sorted(ops - registered - set(REFUSED) - set(RECURRENT))
    assert not missing
    assert not set(REFUSED) & registered
    docs = (Path(__file__).resolve().parent.parent / "docs" / "flow_rules.md").read_text()
    table = docs[docs.index("## Ops without a rule") :]
    for op in REFUSED:
        assert f"`{op}`" in table, op


def test_zero_initial_state_expanded_to_the_input_shape_carries_no_flow() -> None:
    """Exporters write a zero initial state as Expand(0, Shape(x)): it is a constant, so the
    cell scores as without one."""
    base, *_ = _cell_model("lstm_forward")
    m = onnx.ModelProto()
    m.CopyFrom(base)
    g = m.graph
    g.initializer.extend(
        [
            numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "zero"),
            numpy_helper.from_array(np.array([1, 2, 2], np.int64), "state_shape"),
        ]
    )
    nodes = [
        helper.make_node("Shape", ["xs"], ["sx"]),
        helper.make_node("Expand", ["zero", "state_shape"], ["h0"]),
        helper.make_node("Add", ["h0", "zero"], ["c0e"]),
    ]
    for n in g.node:
        if n.op_type == "LSTM":
            n.input[5] = "h0"
            n.input[6] = "c0e"
    for i, n in enumerate(nodes):
        g.node.insert(1 + i, n)
    a, b = onnxflow.score(m), onnxflow.score(base)
    assert a.log_flow == pytest.approx(b.log_flow, abs=1e-6)
    for name in ("W", "R"):
        np.testing.assert_allclose(a.log_scores[name], b.log_scores[name], atol=1e-6)


def test_carries_flow_follows_data_not_shapes() -> None:
    import onnx_graphsurgeon as gs

    from onnxflow.passes.recurrent import carries_flow

    x = gs.Variable("x", np.float32, [2, 3])
    zero = gs.Constant("zero", np.zeros((1, 1), np.float32))
    shape = gs.Variable("s", np.int64, [2])
    expanded = gs.Variable("e", np.float32, [2, 3])
    doubled = gs.Variable("d", np.float32, [2, 3])
    gs.Node("Shape", inputs=[x], outputs=[shape])
    gs.Node("Expand", inputs=[zero, shape], outputs=[expanded])
    gs.Node("Add", inputs=[x, expanded], outputs=[doubled])
    assert not carries_flow(expanded, {"x"})
    assert not carries_flow(shape, {"x"})
    assert carries_flow(doubled, {"x"})
    assert carries_flow(x, {"x"})


def test_exported_recurrent_cells_prune_their_w_and_r() -> None:
    """tests/exported/ops_recurrent.onnx (make_ops_models.py): a 2-layer bidirectional LSTM,
    a GRU and a bidirectional RNN from torch; every W and R is a weight layer and scores."""
    from pathlib import Path

    path = Path(__file__).resolve().parent / "exported" / "ops_recurrent.onnx"
    model = onnx.load(path)
    cells = [n for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    assert sorted(n.op_type for n in cells) == ["GRU", "LSTM", "LSTM", "RNN"]
    dense = onnxflow.score(model)
    names = {layer.name for layer in dense.dag.layers}
    for n in cells:
        assert {n.input[1], n.input[2]} <= names, n.name
    for name in names:
        assert np.isfinite(dense.log_scores[name]).all(), name


def test_index_mapped_op_onnxruntime_cannot_run_is_one_line() -> None:
    def build(net: Net) -> onnx.ModelProto:
        y = net.pad_conv("x", 3)
        z = net.op("ReverseSequence", y, net.ints([2]), batch_axis=0, time_axis=1)
        return net.model(net.post(z))

    m = build(Net((1, 2, 6, 6), ref=False))
    for n in m.graph.node:
        if n.op_type == "ReverseSequence":
            del n.attribute[:]
            n.attribute.extend([helper.make_attribute("batch_axis", 1)])
            n.attribute.extend([helper.make_attribute("time_axis", 1)])
    with pytest.raises(onnxflow.OnnxflowError) as err:
        onnxflow.score(m)
    assert "\n" not in str(err.value) and "ReverseSequence" in str(err.value), err.value
    assert "index data" in str(err.value)
