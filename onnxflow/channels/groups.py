"""Channel groups: which channel slots of a network must disappear together.

A *slot* is one index along a tensor's channel axis. Tracing walks the normalized analysis
graph (static shapes, constants folded, before linearization: a decomposed LayerNorm must
still be seen as the reduction over channels it is) node by node. Each traced tensor carries
its channel axis and, per position along it, a slot id; weight layers create new slots for
their outputs, one-to-one ops pass the array on (the very same array, so pass-through chains
share it), coupling ops union slots, mixing ops freeze them. Groups are the union-find classes
of slots (../../shared/STRUCTURED.md).

The tracer records, per stored tensor axis, the slot of each index (a *claim*): a weight
layer's out-slice (`W[c]`), a reader's in-slice (`W[:, c]`), a per-channel constant (bias,
BatchNormalization parameters, PRelu slope, a Mul/Add constant). It also records the node
edits the compact model needs (a depthwise Conv's `group`, Split sizes, Reshape shapes).
Per-op behaviour lives in a registry filled by `@channel_rule(...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxflow.dag import is_float_constant
from onnxflow.tensors import read_stored

IN, OUT, PARAM = "in", "out", "param"
"""Kinds of slices: read by a weight layer, produced by one, or a per-channel constant."""


@dataclass
class Trace:
    """A tensor's channel axis and the slot id of each position along it."""

    axis: int
    slots: np.ndarray


@dataclass(frozen=True)
class Slice:
    """The slices of one stored tensor axis that belong to a group."""

    tensor: str
    axis: int
    index: np.ndarray
    kind: str
    weight: bool
    """A prunable weight (counted in the sparsity target and scored)."""


@dataclass
class ChannelGroup:
    id: int
    slices: list[Slice]
    frozen: list[str]
    """Why the group cannot be removed (empty: prunable)."""
    home: str
    """The tensor where the group's first slot was born (bundles for --channel-multiple)."""

    @property
    def prunable(self) -> bool:
        return not self.frozen

    @property
    def channels(self) -> int:
        """Positions along the home tensor (1 for a plain channel)."""
        return max((len(s.index) for s in self.slices if s.kind == OUT), default=1)


@dataclass(frozen=True)
class Edit:
    """A node attribute or shape operand that carries a channel count.

    `kind` is `group` (depthwise Conv: the new group is the kept count of `parts[0]`),
    `split` (one part per output), `reshape` (dimension `axis` of the shape operand),
    `shape` (the same for input `operand`, e.g. Resize's sizes) or `slice` (entry `axis`
    of a Slice's starts and ends: the kept counts of the parts before and inside it)."""

    kind: str
    node: str
    """The node's first output name: it keys the node in the original model too."""
    parts: tuple[np.ndarray, ...]
    axis: int = 0
    operand: int = 1


@dataclass
class ChannelGroups:
    """The result of tracing: groups, claims by stored tensor axis, constraints, edits."""

    groups: list[ChannelGroup]
    claims: dict[tuple[str, int], np.ndarray]
    """Group id of each index of a stored tensor axis."""
    kinds: dict[tuple[str, int], str]
    weights: set[str]
    """Names of the prunable weights (the weight-layer DAG's)."""
    shapes: dict[str, tuple[int, ...]]
    """Shapes of the stored tensors named in `claims`."""
    tensors: list[np.ndarray]
    """Group id of each position of each traced tensor: each must keep one position."""
    edits: list[Edit]
    copies: dict[str, str] = field(default_factory=dict)
    """Names that the model writes as an Identity of another stored tensor -> that tensor,
    where the name is a parameter of its own: TorchScript stores equal initializers once
    (the zero biases of two unrelated layers). Each is claimed and cut on its own, and
    `materialize` gives it its own initializer where it or its source is cut."""

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def frozen_summary(self) -> dict[str, int]:
        """Frozen groups counted by their first reason."""
        out: dict[str, int] = {}
        for g in self.groups:
            if g.frozen:
                out[g.frozen[0]] = out.get(g.frozen[0], 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def kept_index(self, removed: Iterable[int], key: tuple[str, int]) -> np.ndarray:
        """Indices of stored tensor axis `key` that survive removing the groups `removed`."""
        gids = self.claims[key]
        return np.flatnonzero(~np.isin(gids, np.fromiter(removed, np.int64)))

    def masks(self, removed: Iterable[int]) -> dict[str, np.ndarray]:
        """Boolean keep-masks of every prunable weight: False on each slice of a removed
        group (the dense model with these computes what the compact model computes)."""
        masks = {n: np.ones(self.shapes[n], dtype=bool) for n in sorted(self.weights)}
        gone_ids = np.fromiter(removed, np.int64)
        for (name, axis), gids in self.claims.items():
            if name not in masks:
                continue
            gone = np.isin(gids, gone_ids)
            if gone.any():
                idx: list[slice | np.ndarray] = [slice(None)] * len(self.shapes[name])
                idx[axis] = np.flatnonzero(gone)
                masks[name][tuple(idx)] = False
        return masks


Rule = Callable[["Tracer", gs.Node, list[Trace | None]], list[Trace | None]]
_RULES: dict[str, Rule] = {}


def channel_rule(*ops: str) -> Callable[[Rule], Rule]:
    """Register how channels cross `ops` (default domain)."""

    def register(fn: Rule) -> Rule:
        for op in ops:
            _RULES[op] = fn
        return fn

    return register


def has_rule(op: str) -> bool:
    return op in _RULES


class Tracer:
    """Union-find over slots, filled by walking the graph once."""

    def __init__(
        self,
        graph: gs.Graph,
        stored: Container[str],
        weights: dict[str, tuple[int, ...]],
        excluded: set[str],
    ) -> None:
        self.graph = graph
        self.stored = stored
        self.weights = set(weights)
        self.excluded = excluded
        self.parent: list[int] = []
        self.birth: list[str] = []
        self.frozen: dict[int, str] = {}
        self.traces: dict[str, Trace] = {}
        self.claims: dict[tuple[str, int], np.ndarray] = {}
        self.kinds: dict[tuple[str, int], str] = {}
        self.shapes: dict[str, tuple[int, ...]] = dict(weights)
        self.edits: list[Edit] = []
        self.opset = int(graph.opset or 13)
        self.aliases: dict[str, str] = {}
        """Identity outputs of stored tensors (exporters deduplicate equal constants that
        way), which folding turned into constants of their own: the stored tensor is shared."""

    # --- union-find -------------------------------------------------------------------
    def new(self, n: int, birth: str) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.birth.extend([birth] * n)
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, s: int) -> int:
        parent = self.parent
        root = s
        while parent[root] != root:
            root = parent[root]
        while parent[s] != root:
            parent[s], s = root, parent[s]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def freeze(self, t: Trace | None, reason: str) -> None:
        if t is not None:
            for s in np.unique(t.slots).tolist():
                self.frozen.setdefault(int(s), reason)

    # --- claims -----------------------------------------------------------------------
    def claim(self, t: gs.Tensor, axis: int, slots: np.ndarray, kind: str) -> bool:
        """Record that index i of `t`'s axis belongs to slots[i]; `t` is seen through
        Identity/Cast/Transpose views to the stored tensor. False (and the slots frozen)
        when it is not a stored tensor this tool can rewrite."""
        found = stored_axis(t, axis, self.stored)
        if found is None:
            self.freeze(Trace(0, slots), "per-channel constant computed in the graph")
            return False
        const, ax = found
        name = const.name
        key = (name, ax)
        self.shapes[name] = tuple(int(d) for d in const.shape)
        if name in self.excluded:
            self.freeze(Trace(0, slots), "excluded (--exclude)")
        old = self.claims.get(key)
        if old is None:
            self.claims[key] = slots.copy()
            self.kinds[key] = kind
        else:
            self.union(old, slots)
        return True

    def trace_graph(self) -> None:
        for node in self.graph.nodes:
            ins = [
                self.traces.get(t.name) if isinstance(t, gs.Variable) else None for t in node.inputs
            ]
            rule = _RULES.get(node.op) if (node.domain or "") in ("", "ai.onnx") else None
            outs = no_rule(self, node, ins) if rule is None else rule(self, node, ins)
            for t, tr in zip(node.outputs, outs, strict=False):
                if tr is not None and t.shape is not None:
                    if len(tr.slots) != int(t.shape[tr.axis]):
                        self.freeze(tr, f"{node.op} changes the channel count")
                        continue
                    self.traces[t.name] = tr
        for t in self.graph.outputs:
            self.freeze(self.traces.get(t.name), "graph output")

    def result(self) -> ChannelGroups:
        # Group ids number the union-find roots in slot order (network order).
        root = np.array([self.find(s) for s in range(len(self.parent))], dtype=np.int64)
        roots, group_of_slot = np.unique(root, return_inverse=True)
        reasons: dict[int, list[str]] = {}
        for s, why in self.frozen.items():
            lst = reasons.setdefault(int(group_of_slot[s]), [])
            if why not in lst:
                lst.append(why)

        def gid(slots: np.ndarray) -> np.ndarray:
            return group_of_slot[slots].astype(np.int64)

        claims = {key: gid(slots) for key, slots in self.claims.items()}
        slices: dict[int, list[Slice]] = {}
        for (name, axis), gids in claims.items():
            kind = self.kinds[(name, axis)]
            order = np.argsort(gids, kind="stable")
            ids, starts = np.unique(gids[order], return_index=True)
            for g, idx in zip(ids.tolist(), np.split(order, starts[1:]), strict=True):
                slices.setdefault(g, []).append(
                    Slice(name, axis, np.sort(idx), kind, name in self.weights)
                )
        groups = []
        for g in sorted(slices):
            r = int(roots[g])
            frozen = list(reasons.get(g, []))
            if not frozen and not any(s.weight for s in slices[g]):
                frozen.append("no prunable weight")
            groups.append(ChannelGroup(g, slices[g], frozen, self.birth[r]))
        seen: set[int] = set()
        tensors = []
        for tr in self.traces.values():
            if id(tr.slots) not in seen:
                seen.add(id(tr.slots))
                tensors.append(gid(tr.slots))
        edits = [
            Edit(e.kind, e.node, tuple(gid(p) for p in e.parts), e.axis, e.operand)
            for e in self.edits
        ]
        return ChannelGroups(
            groups,
            claims,
            dict(self.kinds),
            set(self.weights),
            self.shapes,
            tensors,
            edits,
            self._copies(),
        )

    def _copies(self) -> dict[str, str]:
        """The aliases that folding made constants of their own (parameters that the
        exporter stored once for being equal, not views of a weight kept for its layer)."""
        tensors = self.graph.tensors()
        return {a: s for a, s in self.aliases.items() if isinstance(tensors.get(a), gs.Constant)}


def stored_axis(
    t: gs.Tensor | None, axis: int, stored: Container[str]
) -> tuple[gs.Constant, int] | None:
    """The stored float constant that `t` is (through Identity, Cast and Transpose) and the
    axis of it that `axis` of `t` is."""
    while isinstance(t, gs.Variable) and len(t.inputs) == 1:
        view = t.inputs[0]
        if view.op == "Transpose":
            rank = len(view.outputs[0].shape or [])
            perm = view.attrs.get("perm") or list(range(rank))[::-1]
            axis = int(perm[axis])
        elif view.op not in ("Identity", "Cast"):
            return None
        t = view.inputs[0]
    if isinstance(t, gs.Constant) and is_float_constant(t) and t.name in stored:
        return t, axis
    if (
        isinstance(t, gs.Constant)
        and is_float_constant(t)
        and isinstance(stored, Aliases)
        and t.name in stored.aliases
    ):
        return t, axis
    return None


class Aliases(frozenset[str]):
    """Stored tensor names, plus names that are Identity views of them in the model, and
    the Reshapes whose target shape the model computes (`computed_shapes`)."""

    aliases: dict[str, str]
    computed_shapes: dict[str, dict[int, int | None]]
    """Reshape output -> the positions of its target shape that the model computes, each
    with the axis of the Reshape's own input whose size it reads (`x.reshape(B, H, W,
    x.size(2))`: that count follows the cut by itself), or None where it is read off
    another tensor or computed otherwise (it cannot follow; key -1: every position)."""

    @classmethod
    def of(cls, model: onnx.ModelProto, stored: set[str]) -> Aliases:
        out = cls(stored)
        out.aliases = {}
        for node in model.graph.node:
            if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.input:
                src = out.aliases.get(node.input[0], node.input[0])
                if src in stored:
                    out.aliases[node.output[0]] = src
        shapes = ComputedShapes(model, stored)
        out.computed_shapes = {}
        for node in model.graph.node:
            found = shapes.unfollowed(node) if node.op_type == "Reshape" else None
            if found is not None:
                out.computed_shapes[node.output[0]] = found
        return out


STORED = "stored"
"""`ComputedShapes.layout`: a position the model stores (a literal, or -1/0)."""


class ComputedShapes:
    """How a model computes the target shapes of its Reshapes, read once per model: a
    shape operand that is not stored is read as a Concat of 1-D parts (how exporters write
    `x.reshape(b, C, -1)`). The tracer asks which positions cannot follow a cut; the
    materializer, which stored part holds a position it must rewrite."""

    def __init__(self, model: onnx.ModelProto, stored: Container[str]) -> None:
        self.model, self.stored = model, stored
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self._ranks: dict[str, int] = {}

    def layout(
        self, node: onnx.NodeProto, operand: int = 1
    ) -> tuple[list[tuple[str, int, int | str | None]], bool] | None:
        """Each position of the target shape (input `operand`: Reshape's shape, Resize's
        sizes) as (part, index in the part, source), and whether every position is known;
        None where the shape is stored.
        The source is `STORED`, the axis of the Reshape's own input whose size the part
        copies (`Gather` or `Slice` of `Shape(input)`: it follows a cut by itself), or
        None (an Unsqueeze of some other scalar). A part of any other kind ends the known
        positions."""
        if len(node.input) <= operand or node.input[operand] in self.stored:
            return None
        concat = self.producer.get(node.input[operand])
        if concat is None or concat.op_type != "Concat":
            return [], False
        data = node.input[0]
        positions: list[tuple[str, int, int | str | None]] = []
        for part in concat.input:
            if part in self.stored:
                size = int(np.asarray(read_stored(self.model, part)).size)
                positions += [(part, i, STORED) for i in range(size)]
                continue
            maker = self.producer.get(part)
            if maker is not None and maker.op_type == "Unsqueeze":
                positions.append((part, 0, self._own_axis(maker, data)))
                continue
            axes = self._own_axes(maker, data) if maker is not None else None
            if axes is None:
                return positions, False
            positions += [(part, i, k) for i, k in enumerate(axes)]
        return positions, True

    def unfollowed(self, node: onnx.NodeProto) -> dict[int, int | None] | None:
        """`Aliases.computed_shapes` of one Reshape (None where its shape is stored)."""
        found = self.layout(node)
        if found is None:
            return None
        positions, complete = found
        computed: dict[int, int | None] = {}
        for at, (_, _, source) in enumerate(positions):
            if not isinstance(source, str):
                computed[at] = source
        if not complete:
            computed[-1] = None
        return computed

    def _value(self, name: str) -> np.ndarray:
        return np.asarray(read_stored(self.model, name)).reshape(-1)

    def _own_axis(self, part: onnx.NodeProto, data: str) -> int | None:
        """k where `part` is Unsqueeze(Gather(Shape(data), k)), else None."""
        gather = self.producer.get(part.input[0])
        if gather is None or gather.op_type != "Gather" or gather.input[1] not in self.stored:
            return None
        shape = self.producer.get(gather.input[0])
        if shape is None or shape.op_type != "Shape" or shape.input[0] != data:
            return None
        if any(a.name in ("start", "end") for a in shape.attribute):
            return None
        k = self._value(gather.input[1])
        return int(k[0]) if k.size == 1 else None

    def _own_axes(self, part: onnx.NodeProto, data: str) -> list[int] | None:
        """The input axes whose sizes `part` copies where it is Slice(Shape(data), s, e)
        with stored bounds, axes 0 and step 1 (`x.flatten(2)`'s leading dimensions)."""
        shape = self.producer.get(part.input[0])
        if part.op_type != "Slice" or shape is None or shape.op_type != "Shape":
            return None
        if shape.input[0] != data or len(part.input) < 3:
            return None
        if any(b not in self.stored for b in part.input[1:3]):
            return None
        if any(
            b and (b not in self.stored or self._value(b).tolist() not in ([0], [1]))
            for b in part.input[3:]
        ):
            return None
        r = self._rank(data)
        if r is None:
            return None
        lo, hi = (int(self._value(b)[0]) for b in part.input[1:3])
        return list(range(r))[lo:hi]

    def _rank(self, name: str) -> int | None:
        if not self._ranks:  # inferred once, where a Slice of a Shape asks for it
            inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=False).graph
            for vi in [*inferred.value_info, *inferred.input, *inferred.output]:
                if vi.type.tensor_type.HasField("shape"):
                    self._ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
        return self._ranks.get(name)


def no_rule(tr: Tracer, node: gs.Node, ins: list[Trace | None]) -> list[Trace | None]:
    """An op without a channel rule mixes whatever reaches it."""
    for t in ins:
        tr.freeze(t, f"op without a channel rule ({node.op})")
    return [None] * len(node.outputs)


def _rank(t: gs.Tensor) -> int:
    return len(t.shape) if t.shape is not None else -1


def _dims(t: gs.Tensor) -> tuple[int, ...]:
    return tuple(int(d) for d in (t.shape or ()))


def trace_channels(
    graph: gs.Graph,
    stored: Container[str],
    weights: dict[str, tuple[int, ...]],
    excluded: Sequence[str] = (),
) -> ChannelGroups:
    """Channel groups of a normalized (static-shaped, unlinearized) analysis graph.

    Args:
        graph: the analysis graph (not modified).
        stored: names of tensors the original model stores (initializers, Constant nodes).
        weights: shapes of the prunable weights (the weight-layer DAG) by name.
        excluded: weights never to prune (their groups are frozen).
    """
    from onnxflow.channels import rules  # noqa: F401 - fills the registry

    tracer = Tracer(graph, stored, weights, set(excluded))
    if isinstance(stored, Aliases):
        tracer.aliases = stored.aliases
    tracer.trace_graph()
    return tracer.result()


__all__ = [
    "IN",
    "OUT",
    "PARAM",
    "ChannelGroup",
    "ChannelGroups",
    "Edit",
    "Slice",
    "Trace",
    "Tracer",
    "channel_rule",
    "trace_channels",
]
