"""Channel mode's defaults and presentation: the "auto" channel multiple (kept counts stay
multiples of 16 while above 16, free below), the sparsity contract under it, the report's
figures from the shared rows (`onnxflow.rows`), and a summary that fits 80 columns."""

from __future__ import annotations

import math

import channel_nets as nets
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxflow
from onnxflow.channels.api import analyse, prune_channels
from onnxflow.channels.report import ChannelReport
from onnxflow.channels.score import (
    AUTO,
    AUTO_MULTIPLE,
    Budget,
    group_weights,
    home_multiples,
    units,
)
from onnxflow.options import PruneOptions
from onnxflow.passes.apply_masks import apply_masks
from onnxflow.render import channel_summary
from onnxflow.rows import LayerRow

WIDE, NARROW = 100, 40


def wide_chain() -> onnx.ModelProto:
    """3 -> 100 -> 40 -> 24 channels, then the head (5 classes)."""
    n = nets.Net(21)
    x = n.relu(n.conv("x", 3, WIDE))
    x = n.relu(n.conv(x, WIDE, NARROW))
    x = n.relu(n.conv(x, NARROW, 24))
    return n.build(n.head(x, 24), nets.IMG, ["N", 5])


def conv_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    inits = {t.name: t for t in model.graph.initializer}
    return [
        numpy_helper.to_array(inits[node.input[1]])
        for node in model.graph.node
        if node.op_type == "Conv"
    ]


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_auto_bundles_down_to_16_then_single_groups() -> None:
    """Under "auto" a home's units are its `count % 16` lowest groups, then 16 at a time
    down to 16 channels, then single groups: kept counts are multiples of 16 or below 16,
    what onnxruntime's NCHWc kernels take."""
    cg = analyse(wide_chain(), PruneOptions(sparsity=0.5)).groups
    assert AUTO_MULTIPLE == 16 and set(home_multiples(cg, AUTO).values()) == {16}
    scores = np.arange(max(g.id for g in cg.groups) + 1, dtype=float)
    homes = {g.id: g.home for g in cg.groups}
    width = {h: sum(1 for g in cg.groups if g.home == h) for h in set(homes.values())}
    sizes: dict[int, list[int]] = {}
    for unit in units(cg, scores, set(), AUTO):
        assert len({homes[g] for g in unit}) == 1  # a bundle stays in one layer
        sizes.setdefault(width[homes[unit[0]]], []).append(len(unit))
    assert sizes == {
        WIDE: [4] + [16] * 5 + [1] * 16,
        NARROW: [8, 16] + [1] * 16,
        24: [8] + [1] * 16,
    }  # the 5 classifier outputs are frozen (graph output)
    removed = set(sizes and units(cg, scores, set(), AUTO)[0])
    again = units(cg, scores, removed, AUTO)  # after a removal the pattern goes on
    assert [len(u) for u in again if width[homes[u[0]]] == WIDE] == [16] * 5 + [1] * 16


def test_integer_multiple_never_takes_the_last_k() -> None:
    cg = analyse(wide_chain(), PruneOptions(sparsity=0.5)).groups
    scores = np.arange(max(g.id for g in cg.groups) + 1, dtype=float)
    homes = {g.id: g.home for g in cg.groups}
    width = {h: sum(1 for g in cg.groups if g.home == h) for h in set(homes.values())}
    wide = [u for u in units(cg, scores, set(), 16) if width[homes[u[0]]] == WIDE]
    assert [len(u) for u in wide] == [4] + [16] * 6  # 100 -> 96 -> ... -> 16 -> (0)
    budget = Budget(cg)
    for unit in wide[:-1]:
        assert budget.can_remove(unit)
        budget.remove(unit)
    assert not budget.can_remove(wide[-1])  # the layer's last 16 stay


def test_default_is_auto_and_keeps_the_contract() -> None:
    """Default settings: each layer keeps its width, a multiple of 16, or 16 channels or
    fewer; the sparsity is met with at most one bundle beyond it, and the compact model
    computes what the masked original computes."""
    model = wide_chain()
    result = onnxflow.prune(model, granularity="channel", sparsity=0.5, iterations=5)
    assert result.report.options is not None
    assert result.report.options["channel_multiple"] == AUTO
    w = conv_weights(result.model)
    for conv, width in zip(w, (WIDE, NARROW, 24), strict=True):
        kept = conv.shape[0]
        assert kept == width or kept <= 16 or kept % 16 == 0, (width, kept)
    assert w[0].shape[0] < WIDE
    assert w[1].shape[1] == w[0].shape[0]
    r = result.report
    assert r.removed_share >= 0.5
    cg = analyse(model, PruneOptions(sparsity=0.5)).groups
    bundle = 16 * group_weights(cg).max()
    assert (r.removed_share - 0.5) * r.prunable_weights <= bundle
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    a, b = run(apply_masks(model, result.masks), x), run(result.model, x)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max())


def test_multiple_one_leaves_counts_free() -> None:
    result = prune_channels(
        wide_chain(), PruneOptions(sparsity=0.5, iterations=5), channel_multiple=1
    )
    assert result.report.options is not None and result.report.options["channel_multiple"] == 1
    assert result.report.removed_share >= 0.5


def test_small_models_are_unaffected_by_auto() -> None:
    """Below the auto width nothing is bundled: auto and 1 remove the same groups."""
    model = nets.conv_chain()
    auto = prune_channels(model, PruneOptions(sparsity=0.5, iterations=3))
    one = prune_channels(model, PruneOptions(sparsity=0.5, iterations=3), channel_multiple=1)
    assert auto.kept == one.kept


def test_report_figures_are_the_compact_models_own() -> None:
    """The report's rows (onnxflow.rows) count exactly the weights left in the compact model;
    weights and FLOPs are their Totals."""
    result = onnxflow.prune(wide_chain(), granularity="channel", sparsity=0.5, iterations=3)
    r = result.report
    inits = {t.name: t for t in result.model.graph.initializer}
    assert r.layers and all(math.prod(inits[row.name].dims) == row.kept for row in r.layers)
    assert r.weights == sum(row.params for row in r.layers)
    assert r.weights_after == sum(row.kept for row in r.layers) < r.weights
    assert r.flops_before == sum(row.flops for row in r.layers)
    assert r.flops_after == sum(2 * row.kept * row.uses for row in r.layers) < r.flops_before
    d = r.to_dict()
    assert d["weights_after"] == r.weights_after and d["flops_after"] == r.flops_after
    assert [row["kept"] for row in d["layers"]] == [row.kept for row in r.layers]


def big_report(**kw: object) -> ChannelReport:
    rows = [
        LayerRow(f"layer{i}.very_long_initializer_name.weight", [f"n{i}"], "Conv",
                 [2048, 2048, 3, 3], 37_748_736, 18_874_368, 49)
        for i in range(3)
    ]  # fmt: skip
    fields: dict[str, object] = dict(
        groups=105_032, prunable_groups=104_032, removed_groups=52_017,
        frozen={"graph output": 1000, "op without a channel rule (GatherElements)": 12,
                "Reshape whose channel mapping cannot be followed": 3,
                "LayerNormalization over the channel axis": 768},
        layers=rows, prunable_weights=113_246_208, params_before=125_500_000,
        params_after=62_700_000, bytes_before=1_002_057_677, bytes_after=501_012_345,
        log_flow=167.2, log_flow_after=147.3, max_relative_difference=4e-7,
        latency_before_ms=12345.67, latency_after_ms=6543.21, seconds=12345.6,
    )  # fmt: skip
    fields.update(kw)
    return ChannelReport(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("latency", [True, False])
def test_summary_fits_80_columns(latency: bool) -> None:
    r = big_report() if latency else big_report(latency_before_ms=None, latency_after_ms=None)
    lines = channel_summary(r)
    assert all(len(line) <= 80 for line in lines), [len(line) for line in lines]
    text = "\n".join(lines)
    assert "52,017 of 104,032 prunable channel groups" in text
    assert "50.0" in text and "113,246,208 prunable weights" in text
    assert ("speedup 1.89x" in text) == latency
    assert "1,000 graph output" in text and "768 LayerNormalization" in text
    assert text.count("frozen groups") == 1 and text.count("latency") == latency


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ranking": "best"}, "ranking must be 'flow', 'flow-per-weight' or 'flow-per-flop', "),
        ({"channel_multiple": True}, "channel_multiple must be an integer >= 1 or 'auto', got"),
        ({"min_kept": 3, "scope": "local"}, "min_kept, scope='local': weight mode only"),
    ],
)
def test_library_errors_name_fields(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(onnxflow.OnnxflowError) as e:
        onnxflow.prune(nets.conv_chain(), granularity="channel", sparsity=0.5, **kwargs)
    assert str(e.value).startswith(message) and "--" not in str(e.value), str(e.value)
