"""Where flow comes from besides the float inputs: learned tokens, lookups, constant data.

The paper's R is the total weight of the paths from the inputs to the outputs, each input
carrying 1. Some networks start paths inside the graph:

- a learned token concatenated beside the data (a class, register or distillation token, a
  learned query) is one more input position: it carries 1 in each element, whatever its
  values, in the unit of the data it joins (the scale the data has there);
- a float value that a weight layer reads as its data operand although it does not come
  from the input (Swin V2's position-bias MLP over a constant coordinate table, a one-hot
  of the ids) is that layer's input: it carries 1;
- an embedding lookup `Gather(E, ids)` is one-hot(ids) @ E; on the all-ones input of that
  product each position receives the column sums of |E| (whether E is pruned or not).

A constant *added* to a flow stays a bias (a position embedding is added, so it carries no
flow: the paper's R has no biases), and values computed from integer inputs by anything but
a lookup (attention masks, causal masks, rotary tables) are data, never flow.
"""

from __future__ import annotations

from onnxflow.flow.builder import Const, Flow, FlowBuilder, Shape


def token_source(g: FlowBuilder, c: Const, unit: str) -> Flow:
    """A float constant concatenated beside a flow: a learned token, all ones in the `unit`
    of the data it joins, whatever its values (transformers' DeiT initializes its tokens to
    zero; a token's initial value says nothing about the paths it opens). In the real
    network normalization keeps tokens and data at one scale; the positive linearization has
    no normalization statistics, so the data's flow grows with depth, and a token entering
    deep (CaiT, CoaT) with 1 would vanish beside it in float32. In that unit the data's
    largest element is about 1 (every weight layer renormalizes to max 1). A dead join
    (unit -inf) gives the token unit 0. A zero constant concatenated as padding looks the
    same in an exported graph and is counted alike."""
    return Flow(g.ones(c.shape), unit, c.shape)


def finite_unit(g: FlowBuilder, unit: str) -> str:
    """`unit`, or 0 where it is -inf (every flow there pruned)."""
    if unit == g.zero_scale:
        return unit
    return g.node("Where", [g.node("IsInf", [unit]), g.zero_scale, unit])


def data_source(g: FlowBuilder, c: Const) -> Flow:
    """A weight layer's data operand that is not a flow: that layer's input, all ones."""
    return Flow(g.ones(c.shape), g.zero_scale, c.shape)


def lookup_forward(g: FlowBuilder, table: str, table_shape: Shape, idx_rank: int,
                   axis: int, out_shape: Shape) -> str:  # fmt: skip
    """Flow of `Gather(table, ids, axis)` as one-hot(ids) times the table on an all-ones
    input: at every looked-up position, the sum of the table over `axis`."""
    axis %= len(table_shape)
    total = g.reduce("ReduceSum", table, [axis], keepdims=1)
    lead, trail = list(table_shape[:axis]), list(table_shape[axis + 1 :])
    return g.expand_to(g.reshape(total, [*lead, *[1] * idx_rank, *trail]), (), out_shape)


def lookup_backward(g: FlowBuilder, gy: str, table_shape: Shape, idx_rank: int,
                    axis: int) -> str:  # fmt: skip
    """Transpose of `lookup_forward`: every row of the table receives the flow of every
    looked-up position (each one-hot input is all ones)."""
    axis %= len(table_shape)
    if idx_rank:
        gy = g.reduce("ReduceSum", gy, list(range(axis, axis + idx_rank)), keepdims=1)
    lead, trail = list(table_shape[:axis]), list(table_shape[axis + 1 :])
    return g.expand_to(g.reshape(gy, [*lead, 1, *trail]), (), table_shape)
