"""Recurrent cells (ONNX RNN, GRU, LSTM) unrolled into their positive linearization.

The analysis graph gets, in place of each cell whose input carries flow, the cell's linearized
recurrence written in ordinary ops (MatMul by the stored W and R seen through a Transpose,
Add, Split, Concat, Slice), so that the existing flow rules score it and W and R become
weight layers of the DAG like any MatMul weight. The pruned model keeps the cell: masks key
by the initializer names.

Linearization (docs/flow_rules.md), per direction, biases dropped, with `Xw = X_t |W_g|^T`
and `Hr = H_{t-1} |R_g|^T` for each gate g:

- activations (f, g, h: sigmoid, tanh...) pass flow, as everywhere;
- a product of two flows inside the cell (a gate times a value) merges them as a sum, the
  bound used for Max/Min of flows: the product rule would make R a polynomial in R whose
  degree doubles at every step, while the sum keeps the cell linear in the state, so R is a
  linear recurrence in |W| and |R| and every gate's weights lie on input-output paths;
- a product with the zero state of the first step is zero; a constant initial state is a
  shift (a bias) and carries no flow, an initial state computed from the inputs carries it.

RNN:  H_t = Xw + Hr
GRU:  z = Xw_z + Hr_z, r = Xw_r + Hr_r, n = Xw_h + (r + H_{t-1}) |R_h|^T
      (linear_before_reset: Xw_h + r + Hr_h), H_t = (z + n) + (z + H_{t-1})
LSTM: i, o, f, c = Xw + Hr (+ |P_i| C_{t-1}, |P_f| C_{t-1}; input_forget: i = f),
      C_t = (f + C_{t-1}) + (i + c), o += |P_o| C_t, H_t = o + C_t
where a term with a state that is zero (the first step without a flowing initial state) is
absent: (r + H_{t-1}) |R_h|^T, z + H_{t-1} and f + C_{t-1} vanish with H_{t-1} or C_{t-1}.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxflow.errors import OnnxflowError

RECURRENT = ("RNN", "GRU", "LSTM")
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


class _Writer:
    """Appends float nodes with static shapes to an analysis graph."""

    def __init__(self, graph: gs.Graph, prefix: str, dtype: Any) -> None:
        self.graph, self.prefix, self.dtype = graph, prefix, dtype
        self.count = 0

    def _name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}/unrolled/{hint}_{self.count}"

    def const(self, value: Any, dtype: Any = np.int64) -> gs.Constant:
        return gs.Constant(self._name("c"), np.asarray(value, dtype=dtype))

    def op(
        self, op: str, inputs: list[gs.Tensor], shapes: list[tuple[int, ...]], **attrs: Any
    ) -> Any:
        outs = [gs.Variable(self._name(op), dtype=self.dtype, shape=list(s)) for s in shapes]
        self.graph.nodes.append(
            gs.Node(op, name=self._name(op + "_node"), attrs=attrs, inputs=inputs, outputs=outs)
        )
        return outs[0] if len(outs) == 1 else outs

    def split(self, x: gs.Tensor, shape: tuple[int, ...], axis: int, n: int) -> list[Any]:
        if n == 1:
            return [x]
        part = list(shape)
        part[axis] //= n
        outs = self.op("Split", [x, self.const([part[axis]] * n)], [tuple(part)] * n, axis=axis)
        return list(outs)

    def reverse(self, x: gs.Tensor, shape: tuple[int, ...], axis: int) -> gs.Variable:
        n = shape[axis]
        args = [self.const([n - 1]), self.const([-n - 1]), self.const([axis]), self.const([-1])]
        return self.op("Slice", [x, *args], [shape])

    def add(self, terms: list[gs.Tensor | None], shape: tuple[int, ...]) -> gs.Tensor:
        present = [t for t in terms if t is not None]
        if len(present) == 1:
            return present[0]
        return self.op("Sum", present, [shape])


# Ops whose operands after the first are shapes, indices or axes: they carry no flow.
_DATA_FIRST = frozenset(
    {"Expand", "Reshape", "Tile", "Slice", "Unsqueeze", "Squeeze", "Pad", "Split", "Resize"}
)
_NO_FLOW = frozenset({"Shape", "Size", "ConstantOfShape", "EyeLike", "RandomNormalLike"})


def carries_flow(t: gs.Tensor | None, inputs: set[str], depth: int = 256) -> bool:
    """Whether `t` is computed from a graph input through data operands (not only through
    its shape): a zero initial state `Expand(0, Shape(x))` carries none."""
    if not isinstance(t, gs.Variable) or not t.name:
        return False
    if t.name in inputs:
        return True
    if len(t.inputs) != 1 or depth == 0:
        return False
    node = t.inputs[0]
    if node.op in _NO_FLOW:
        return False
    data = node.inputs[:1] if node.op in _DATA_FIRST else node.inputs
    return any(carries_flow(i, inputs, depth - 1) for i in data)


def _state(t: gs.Tensor | None, layout: int, w: _Writer, shape: tuple[int, ...], inputs: set[str]):
    """An initial state that carries flow (computed from the inputs), as [D, B, H]; None for
    an absent or constant one (a shift)."""
    if not carries_flow(t, inputs):
        return None
    if layout == 1:
        return w.op("Transpose", [t], [shape], perm=[1, 0, 2])
    return t


def unroll(graph: gs.Graph, node: gs.Node, inputs: set[str]) -> None:
    """Replace one RNN/GRU/LSTM node of `graph` by its unrolled linearization."""
    op = node.op
    ins = list(node.inputs) + [None] * (8 - len(node.inputs))
    x, wt, rt, _bias, lens, h0, c0, peep = ins
    layout = int(node.attrs.get("layout", 0))
    direction = str(node.attrs.get("direction", "forward"))
    if isinstance(direction, bytes):
        direction = direction.decode()
    hidden = int(node.attrs["hidden_size"])
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    nd, g_count = len(dirs), _GATES[op]
    xs = tuple(int(d) for d in x.shape)
    steps, batch, feat = (xs[1], xs[0], xs[2]) if layout == 1 else xs
    if lens is not None and lens.name:
        values = lens.values if isinstance(lens, gs.Constant) else None
        if values is None or not (np.asarray(values) == steps).all():
            raise OnnxflowError(
                f"node {node.name!r} ({op}): sequence_lens shorter than the sequence "
                "(padded batches) are not supported; export with full-length sequences"
            )
    w = _Writer(graph, node.name or op, x.dtype if x.dtype is not None else np.float32)
    gh = g_count * hidden
    state = (nd, batch, hidden)

    seq = w.op("Transpose", [x], [(steps, batch, feat)], perm=[1, 0, 2]) if layout == 1 else x
    per_dir = [w.reverse(seq, (steps, batch, feat), 0) if d == "reverse" else seq for d in dirs]
    stacked = [w.op("Unsqueeze", [s, w.const([0])], [(1, steps, batch, feat)]) for s in per_dir]
    xd = stacked[0] if nd == 1 else w.op("Concat", stacked, [(nd, steps, batch, feat)], axis=0)
    flat = w.op("Reshape", [xd, w.const([nd, steps * batch, feat])], [(nd, steps * batch, feat)])
    w_t = w.op("Transpose", [wt], [(nd, feat, gh)], perm=[0, 2, 1])
    r_t = w.op("Transpose", [rt], [(nd, hidden, gh)], perm=[0, 2, 1])
    xw = w.op("MatMul", [flat, w_t], [(nd, steps * batch, gh)])
    xw = w.op("Reshape", [xw, w.const([nd, steps, batch, gh])], [(nd, steps, batch, gh)])
    per_step = w.split(xw, (nd, steps, batch, gh), 1, steps)
    peep_parts: list[gs.Constant] = []
    if op == "LSTM" and isinstance(peep, gs.Constant) and np.any(peep.values):
        p = np.asarray(peep.values, np.float32).reshape(nd, 3, 1, hidden)
        peep_parts = [w.const(p[:, k], np.float32) for k in range(3)]  # i, o, f

    h = _state(h0, layout, w, state, inputs)
    c = _state(c0, layout, w, state, inputs) if op == "LSTM" else None
    hs: list[gs.Tensor] = []
    for s in range(steps):
        xg = w.op("Reshape", [per_step[s], w.const([nd, batch, gh])], [(nd, batch, gh)])
        gx = w.split(xg, (nd, batch, gh), 2, g_count)
        gr: list[Any] = [None] * g_count
        if h is not None:
            gr = w.split(w.op("MatMul", [h, r_t], [(nd, batch, gh)]), (nd, batch, gh), 2, g_count)
        if op == "RNN":
            h = w.add([gx[0], gr[0]], state)
        elif op == "GRU":
            z = w.add([gx[0], gr[0]], state)
            r = w.add([gx[1], gr[1]], state)
            if h is None:
                n = gx[2]
            elif node.attrs.get("linear_before_reset", 0):
                n = w.add([gx[2], r, gr[2]], state)
            else:
                gated = w.op("Add", [r, h], [state])
                hh = w.split(w.op("MatMul", [gated, r_t], [(nd, batch, gh)]), (nd, batch, gh), 2, 3)
                n = w.add([gx[2], hh[2]], state)
            h = w.add([z, n, *([z, h] if h is not None else [])], state)
        else:
            i, o, f, cc = (w.add([gx[k], gr[k]], state) for k in range(4))
            if peep_parts and c is not None:
                i = w.add([i, w.op("Mul", [c, peep_parts[0]], [state])], state)
                f = w.add([f, w.op("Mul", [c, peep_parts[2]], [state])], state)
            if node.attrs.get("input_forget", 0):
                i = f
            c = w.add([*([f, c] if c is not None else []), i, cc], state)
            if peep_parts:
                o = w.add([o, w.op("Mul", [c, peep_parts[1]], [state])], state)
            h = w.add([o, c], state)
        hs.append(h)

    assert h is not None
    outs: list[gs.Tensor | None] = [None, h, c]
    wanted = list(node.outputs)
    node.outputs.clear()
    node.inputs.clear()
    if wanted and wanted[0].name:
        ups = [w.op("Unsqueeze", [t, w.const([0])], [(1, *state)]) for t in hs]
        y = ups[0] if steps == 1 else w.op("Concat", ups, [(steps, *state)], axis=0)
        if "reverse" in dirs:
            parts = w.split(y, (steps, *state), 1, nd)
            parts = [
                w.reverse(p, (steps, 1, batch, hidden), 0) if d == "reverse" else p
                for p, d in zip(parts, dirs, strict=True)
            ]
            y = parts[0] if nd == 1 else w.op("Concat", parts, [(steps, *state)], axis=1)
        if layout == 1:
            y = w.op("Transpose", [y], [(batch, steps, nd, hidden)], perm=[2, 0, 1, 3])
        outs[0] = y
    for k in (1, 2):
        if layout == 1 and outs[k] is not None:
            outs[k] = w.op("Transpose", [outs[k]], [(batch, nd, hidden)], perm=[1, 0, 2])
    for t, new in zip(wanted, outs, strict=False):
        if t.name and new is not None:
            graph.nodes.append(gs.Node("Identity", name=w._name("out"), inputs=[new], outputs=[t]))


def unroll_recurrent(graph: gs.Graph) -> int:
    """Unroll every default-domain RNN/GRU/LSTM whose input is computed (carries flow)."""
    inputs = {t.name for t in graph.inputs}
    cells = [
        n
        for n in graph.nodes
        if n.op in RECURRENT
        and (n.domain or "") in ("", "ai.onnx")
        and carries_flow(n.inputs[0], inputs)
    ]
    for node in cells:
        unroll(graph, node, inputs)
    if cells:
        graph.nodes = [n for n in graph.nodes if n.outputs or n.op not in RECURRENT]
    return len(cells)
