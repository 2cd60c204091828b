"""Channel groups on hand-built models: what is traced together, what is frozen and why,
and the equivalence of the compact model with the original with the masks applied."""

from __future__ import annotations

import channel_nets as nets
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxflow.channels.api import analyse, prune_channels
from onnxflow.channels.groups import ChannelGroups
from onnxflow.options import PruneOptions
from onnxflow.passes.apply_masks import apply_masks


def groups_of(model: onnx.ModelProto) -> ChannelGroups:
    return analyse(model, PruneOptions(sparsity=0.5)).groups


def group_ids(cg: ChannelGroups, tensor: str, axis: int) -> np.ndarray:
    return cg.claims[(tensor, axis)]


def weight_names(model: onnx.ModelProto, op: str) -> list[str]:
    return [n.input[1] for n in model.graph.node if n.op_type == op]


def group_and_kept(model: onnx.ModelProto, op: str, index: int) -> tuple[int, int]:
    """The `group` attribute of the index-th `op` node and its weight's first dimension."""
    node = [n for n in model.graph.node if n.op_type == op][index]
    inits = {t.name: t for t in model.graph.initializer}
    group = next(a.i for a in node.attribute if a.name == "group")
    return group, inits[node.input[1]].dims[0]


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def check_equivalent(model: onnx.ModelProto, sparsity: float = 0.5, **kw: object) -> object:
    """Prune; the compact model must pass the checker, keep the interface, and compute what
    the original computes with the masks applied (relative 1e-4), on batch 2."""
    result = prune_channels(model, PruneOptions(sparsity=sparsity, iterations=5), **kw)  # type: ignore[arg-type]
    compact = result.model
    onnx.checker.check_model(compact, full_check=True)
    assert [o.SerializeToString() for o in compact.graph.output] == [
        o.SerializeToString() for o in model.graph.output
    ]
    assert result.report.removed_groups > 0
    assert result.report.removed_share >= sparsity
    shape = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    masked = apply_masks(model, result.masks)
    for a, b in zip(run(masked, x), run(compact, x), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max())
    # the masks really cut something: the unmasked original differs
    assert any(
        not np.allclose(a, b, atol=1e-6)
        for a, b in zip(run(model, x), run(compact, x), strict=True)
    )
    return result


@pytest.mark.parametrize("name", sorted(nets.ALL))
def test_compact_equals_masked_original(name: str) -> None:
    check_equivalent(nets.ALL[name]())


def test_conv_chain_groups() -> None:
    model = nets.conv_chain()
    cg = groups_of(model)
    w1, w2, w3 = weight_names(model, "Conv")
    # conv1's out-channel c is conv2's in-channel c: one group per channel
    assert np.array_equal(group_ids(cg, w1, 0), group_ids(cg, w2, 1))
    assert np.array_equal(group_ids(cg, w2, 0), group_ids(cg, w3, 1))
    assert len(set(group_ids(cg, w1, 0).tolist())) == 8
    assert len(cg.prunable) == 8 + 8 + 6
    assert cg.frozen_summary() == {"graph output": 5}


def test_bn_parameters_and_bias_ride_with_the_group() -> None:
    model = nets.conv_bn_relu()
    cg = groups_of(model)
    w1 = weight_names(model, "Conv")[0]
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bias = next(n for n in model.graph.node if n.op_type == "Conv").input[2]
    for t in [*bn.input[1:], bias]:
        assert np.array_equal(group_ids(cg, t, 0), group_ids(cg, w1, 0))


def test_residual_add_couples_the_stream() -> None:
    model = nets.basic_residual()
    cg = groups_of(model)
    stem, _, second = weight_names(model, "Conv")
    assert np.array_equal(group_ids(cg, stem, 0), group_ids(cg, second, 0))
    model = nets.bottleneck_projection()
    cg = groups_of(model)
    convs = weight_names(model, "Conv")
    expand, projection, last = convs[3], convs[4], convs[6]
    assert np.array_equal(group_ids(cg, expand, 0), group_ids(cg, projection, 0))
    assert np.array_equal(group_ids(cg, expand, 0), group_ids(cg, last, 0))
    assert not np.array_equal(group_ids(cg, convs[0], 0)[:4], group_ids(cg, convs[1], 0))


def test_depthwise_passes_grouped_couples_per_group() -> None:
    model = nets.depthwise_grouped()
    cg = groups_of(model)
    stem, dw, pw, dw2, grouped = weight_names(model, "Conv")
    assert np.array_equal(group_ids(cg, stem, 0), group_ids(cg, dw, 0))  # same group
    assert np.array_equal(group_ids(cg, pw, 0).repeat(2), group_ids(cg, dw2, 0))  # multiplier 2
    # grouped conv (2 groups of 8 inputs): input j of group 0 and of group 1 go together
    g = group_ids(cg, dw2, 0)
    assert np.array_equal(g[:8], g[8:])
    assert np.array_equal(group_ids(cg, grouped, 1), g[:8])
    out = group_ids(cg, grouped, 0)
    assert np.array_equal(out[:4], out[4:])


def test_depthwise_group_attribute_follows_kept_channels() -> None:
    result = check_equivalent(nets.depthwise_grouped())
    group, kept = group_and_kept(result.model, "Conv", 1)
    assert group == kept < 8


def test_squeeze_excitation_gate_couples() -> None:
    model = nets.squeeze_excitation()
    cg = groups_of(model)
    stem, _, expand, _ = weight_names(model, "Conv")
    assert np.array_equal(group_ids(cg, stem, 0), group_ids(cg, expand, 0))


def test_concat_offsets_and_split_sizes() -> None:
    model = nets.concat_split()
    cg = groups_of(model)
    stem, a, b, mix, p, q = weight_names(model, "Conv")
    mix_in = group_ids(cg, mix, 1)
    assert np.array_equal(mix_in[:4], group_ids(cg, a, 0))
    assert np.array_equal(mix_in[4:10], group_ids(cg, stem, 0))
    assert np.array_equal(mix_in[10:], group_ids(cg, b, 0))
    mix_out = group_ids(cg, mix, 0)
    assert np.array_equal(group_ids(cg, p, 1), mix_out[:4])
    assert np.array_equal(group_ids(cg, q, 1), mix_out[4:])
    result = check_equivalent(model)
    split = next(n for n in result.model.graph.node if n.op_type == "Split")
    sizes = onnx.numpy_helper.to_array(
        next(t for t in result.model.graph.initializer if t.name == split.input[1])
    )
    kept = result.kept[mix][0]
    assert sizes.tolist() == [sum(i < 4 for i in kept), sum(i >= 4 for i in kept)]


def test_flatten_and_reshape_into_gemm_own_feature_blocks() -> None:
    model = nets.flatten_reshape_gemm()
    cg = groups_of(model)
    conv1, conv2 = weight_names(model, "Conv")
    fc1, fc2 = weight_names(model, "Gemm")[:2]
    assert np.array_equal(group_ids(cg, fc1, 0), group_ids(cg, conv1, 0).repeat(16))
    assert np.array_equal(group_ids(cg, fc2, 0), group_ids(cg, conv2, 0).repeat(16))
    result = check_equivalent(model)
    reshape = next(n for n in result.model.graph.node if n.op_type == "Reshape")
    shape = onnx.numpy_helper.to_array(
        next(t for t in result.model.graph.initializer if t.name == reshape.input[1])
    )
    assert shape.tolist() == [1, 16 * len(result.kept[conv2][0])]


def test_nhwc_transpose_moves_the_axis() -> None:
    model = nets.nhwc()
    cg = groups_of(model)
    conv1, conv2 = weight_names(model, "Conv")
    scale = next(n for n in model.graph.node if n.op_type == "Mul").input[1]
    assert np.array_equal(group_ids(cg, scale, 0), group_ids(cg, conv1, 0))
    assert np.array_equal(group_ids(cg, conv2, 1), group_ids(cg, conv1, 0))
    assert len(cg.prunable) == 8 + 6


def test_mlp_and_feed_forward_hidden_units() -> None:
    model = nets.mlp()
    cg = groups_of(model)
    fc1, fc2 = weight_names(model, "Gemm")
    assert np.array_equal(group_ids(cg, fc1, 1), group_ids(cg, fc2, 1))  # transB: in-axis 1
    assert len(cg.prunable) == 32
    model = nets.feed_forward()
    cg = groups_of(model)
    assert len(cg.prunable) == 24  # hidden units; the 8 residual-stream outputs are frozen
    reasons = cg.frozen_summary()
    assert reasons and all("untraced" in r for r in reasons)


def test_layernorm_softmax_and_outputs_freeze() -> None:
    cg = groups_of(nets.layernorm_softmax())
    reasons = cg.frozen_summary()
    assert reasons["LayerNormalization over the channel axis"] == 10
    assert reasons["Softmax over the channel axis"] == 6
    assert reasons["graph output"] == 5
    assert len(cg.prunable) == 6 + 4


def test_prelu_and_per_channel_constants_are_sliced() -> None:
    model = nets.prelu_affine()
    result = check_equivalent(model)
    conv1 = weight_names(model, "Conv")[0]
    kept = len(result.kept[conv1][0])
    inits = {t.name: t for t in result.model.graph.initializer}
    for op, pos, dims in (("PRelu", 1, [kept, 1, 1]), ("Mul", 1, [1, kept, 1, 1])):
        node = next(n for n in result.model.graph.node if n.op_type == op)
        assert list(inits[node.input[pos]].dims) == dims
    add = next(n for n in result.model.graph.node if n.op_type == "Add")
    assert list(inits[add.input[0]].dims) == [kept, 1, 1]


def test_channel_multiple_keeps_multiples() -> None:
    result = check_equivalent(nets.conv_chain(), channel_multiple=4)
    for node in result.model.graph.node:
        if node.op_type == "Conv":
            w = next(t for t in result.model.graph.initializer if t.name == node.input[1])
            assert w.dims[0] % 4 == 0 or w.dims[0] == 6  # the 6-channel layer kept whole


def test_masks_false_on_every_slice_of_a_removed_channel() -> None:
    model = nets.conv_chain()
    result = prune_channels(model, PruneOptions(sparsity=0.5, iterations=3))
    w1, w2, _ = weight_names(model, "Conv")
    kept = set(result.kept[w1][0])
    for c in range(8):
        assert result.masks[w1][c].all() == (c in kept)
        assert result.masks[w2][:, c].any() == (c in kept)


def test_channel_shuffle_couples_index_i_of_every_part() -> None:
    """(8) -> (2, 4) -> transpose -> (8): channel k*4 + i lands at i*2 + k. Removing index
    i of both parts keeps the reshape valid, so channels i and 4 + i are one group."""
    model = nets.channel_shuffle()
    cg = groups_of(model)
    first, second = weight_names(model, "Conv")
    out = group_ids(cg, first, 0)
    assert np.array_equal(out[:4], out[4:])
    assert np.array_equal(group_ids(cg, second, 1), out[:4].repeat(2))  # shuffled order
    assert cg.frozen_summary() == {"graph output": 5}
    assert len(cg.prunable) == 4 + 6
    result = check_equivalent(model, sparsity=0.3)
    kept = len(result.kept[first][0]) // 2
    assert 0 < kept < 4
    shapes = [
        onnx.numpy_helper.to_array(t).tolist()
        for n in result.model.graph.node
        if n.op_type == "Reshape"
        for t in result.model.graph.initializer
        if t.name == n.input[1]
    ]
    assert shapes == [[1, 2, kept, 8, 8], [1, 2 * kept, 8, 8]]


def test_reshape_that_mixes_channels_with_space_freezes() -> None:
    n = nets.Net(19)
    y = n.relu(n.conv("x", 3, 4))
    y = n.op("Reshape", [y, n.const("s", np.array([1, 2, 128], np.int64))])  # 2 channels a row
    y = n.op("MatMul", [y, n.rand("w", (128, 5))])
    cg = groups_of(n.build(y, [1, 3, 8, 8], [1, 2, 5]))
    assert cg.frozen_summary()["Reshape whose channel mapping cannot be followed"] == 4


def test_excluded_weight_freezes_its_groups() -> None:
    model = nets.conv_chain()
    first = weight_names(model, "Conv")[0]
    cg = analyse(model, PruneOptions(sparsity=0.5, exclude=(first,))).groups
    assert cg.frozen_summary()["excluded (--exclude)"] == 8
    result = prune_channels(model, PruneOptions(sparsity=0.3, iterations=2, exclude=(first,)))
    assert result.kept[first][0] == list(range(8))
    assert first not in result.masks


def test_conv_transpose_grouped_and_depthwise() -> None:
    model = nets.conv_transpose()
    cg = groups_of(model)
    stem, last = weight_names(model, "Conv")
    plain, grouped, depthwise = weight_names(model, "ConvTranspose")
    assert np.array_equal(group_ids(cg, plain, 0), group_ids(cg, stem, 0))  # in-slice W[c]
    # 2 groups of 3 inputs and 4 outputs: input j (and output j) of both groups together
    g_in = group_ids(cg, grouped, 0)
    assert np.array_equal(g_in[:3], g_in[3:])
    assert np.array_equal(g_in, group_ids(cg, plain, 1))
    g_out = group_ids(cg, grouped, 1)
    assert len(set(g_out.tolist())) == 4
    # depthwise, multiplier 2: W[c] rides with input channel c, outputs 2c and 2c+1
    assert np.array_equal(group_ids(cg, depthwise, 0), np.tile(g_out, 2))
    assert np.array_equal(group_ids(cg, last, 1), np.tile(g_out, 2).repeat(2))
    assert cg.frozen_summary() == {"graph output": 5}
    result = check_equivalent(model, sparsity=0.3)
    group, kept = group_and_kept(result.model, "ConvTranspose", 2)
    assert group == kept < 8


def test_channel_slices_carry_their_range() -> None:
    model = nets.channel_slice()
    cg = groups_of(model)
    stem, half, mix, tail = weight_names(model, "Conv")
    out = group_ids(cg, stem, 0)
    assert np.array_equal(group_ids(cg, half, 1), out[3:])
    assert np.array_equal(group_ids(cg, mix, 1)[:3], out[:3])
    assert np.array_equal(group_ids(cg, tail, 1), out[4:])
    assert cg.frozen_summary() == {"graph output": 5}
    result = check_equivalent(model, sparsity=0.4)
    kept = np.array(result.kept[stem][0])
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    bounds = [
        (int(inits[n.input[1]][0]), int(inits[n.input[2]][0]))
        for n in result.model.graph.node
        if n.op_type == "Slice"
    ]
    before, inside = int((kept < 3).sum()), int((kept >= 3).sum())
    assert bounds[:2] == [(0, before), (before, before + inside)]
    assert bounds[2] == (int((kept < 4).sum()), len(kept))


def test_chunk_with_computed_bounds_couples_the_halves() -> None:
    model = nets.shuffle_unit()
    cg = groups_of(model)
    stem, inner, back, last = weight_names(model, "Conv")
    out = group_ids(cg, stem, 0)
    assert np.array_equal(out[:4], out[4:])  # half i and 4 + i go together
    assert np.array_equal(group_ids(cg, inner, 1), out[4:])
    # the shuffle puts concat channel k*4 + i at i*2 + k: the kept half a and conv output
    # i are coupled (the unit's channel i), read by the last conv at 2i, 2i + 1
    assert np.array_equal(group_ids(cg, back, 0), out[:4])
    assert np.array_equal(group_ids(cg, last, 1), out[:4].repeat(2))
    assert cg.frozen_summary() == {"graph output": 5}
    result = check_equivalent(model, sparsity=0.3)
    assert len(result.kept[stem][0]) % 2 == 0


def test_computed_bounds_that_do_not_cut_equal_parts_freeze() -> None:
    n = nets.Net(21)
    y = n.relu(n.conv("x", 3, 8))
    one = n.const("one", np.array([1], np.int64))
    c = n.op("Slice", [n.op("Shape", [y]), one, n.const("two", np.array([2], np.int64))])
    end = n.op("Sub", [c, n.const("five", np.array([5], np.int64))])  # x[:, :C - 5]
    y = n.relu(n.conv(n.op("Slice", [y, n.const("zero", np.array([0], np.int64)), end, one]), 3, 6))
    cg = groups_of(n.build(n.head(y, 6), [1, 3, 8, 8], [1, 5]))
    assert cg.frozen_summary()["Slice on the channel axis with computed bounds"] == 8


def test_strided_channel_slice_freezes() -> None:
    n = nets.Net(18)
    y = n.relu(n.conv("x", 3, 8))
    ints = [
        n.const(k, np.array([v], np.int64)) for k, v in (("s", 0), ("e", 8), ("a", 1), ("p", 2))
    ]
    y = n.relu(n.conv(n.op("Slice", [y, *ints]), 4, 6))
    cg = groups_of(n.build(n.head(y, 6), nets.IMG, ["N", 5]))
    assert cg.frozen_summary()["Slice on the channel axis with a step"] == 8


def test_resize_with_sizes_keeps_the_channel_and_rewrites_stored_sizes() -> None:
    model = nets.resize_sizes()
    cg = groups_of(model)
    conv1, conv2, conv3 = weight_names(model, "Conv")
    assert np.array_equal(group_ids(cg, conv2, 1), group_ids(cg, conv1, 0))
    assert np.array_equal(group_ids(cg, conv3, 1), group_ids(cg, conv2, 0))
    assert cg.frozen_summary() == {"graph output": 5}
    result = check_equivalent(model)
    resize = next(n for n in result.model.graph.node if n.op_type == "Resize")
    sizes = next(t for t in result.model.graph.initializer if t.name == resize.input[3])
    assert onnx.numpy_helper.to_array(sizes).tolist() == [1, len(result.kept[conv1][0]), 16, 16]
