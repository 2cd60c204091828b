"""Flow rules of the recurrent cells (LSTM, GRU, RNN) against an unrolled reference, their
pruning, zero initial states, and exported cells.

The method (one-hot weights through onnxruntime on a hand-written positive linearization of
each model, or float64 references where R is not linear in a weight) is in tests/rulecheck.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from rulecheck import central_log_scores

import onnxflow


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


@pytest.mark.parametrize("case", list(CELLS))
def test_recurrent_cell_against_unrolled_reference(case: str) -> None:
    m, aw, ar, total = _cell_model(case)
    result = onnxflow.score(m)
    assert sorted(result.log_scores) == ["R", "W"]
    want_w = central_log_scores(aw, lambda v: total(v, ar))
    want_r = central_log_scores(ar, lambda v: total(aw, v))
    for name, want in (("W", want_w), ("R", want_r)):
        got = result.log_scores[name]
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=name)
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], atol=2e-5, rtol=0, err_msg=name)
    assert result.log_flow == pytest.approx(np.log(total(aw, ar)), abs=2e-5)


def test_pruned_recurrent_cell_equals_the_original_with_masks() -> None:

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
