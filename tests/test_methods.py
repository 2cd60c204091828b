"""Selection controls: the paper's baselines through the same schedule, and --exclude."""

from __future__ import annotations

import netgen
import numpy as np
import pytest
from onnx import numpy_helper

import onnxflow
from onnxflow.cli import main


def weights(model) -> dict[str, np.ndarray]:
    names = set(netgen.prunable_weight_names(model))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in names}


def test_magnitude_keeps_the_largest_weights_globally() -> None:
    model = netgen.cifar_resnet(20)
    result = onnxflow.prune(model, sparsity=0.9, iterations=4, method="magnitude")
    w = weights(model)
    names = [layer.name for layer in result.report.layers]
    flat = np.concatenate([np.abs(w[n]).ravel() for n in names])
    k = round(0.1 * flat.size)
    order = np.lexsort((np.arange(flat.size), -flat))[:k]  # largest, ties by position
    want = np.zeros(flat.size, bool)
    want[order] = True
    got = np.concatenate([result.masks[n].ravel() for n in names])
    np.testing.assert_array_equal(got, want)
    # The --scores file holds the method's scores: log |W|.
    np.testing.assert_allclose(result.log_scores[names[0]], np.log(np.abs(w[names[0]])), rtol=1e-6)


def test_random_is_seeded_and_exact() -> None:
    model = netgen.cifar_resnet(20)
    a = onnxflow.prune(model, sparsity=0.8, iterations=3, method="random", seed=1)
    b = onnxflow.prune(model, sparsity=0.8, iterations=3, method="random", seed=1)
    c = onnxflow.prune(model, sparsity=0.8, iterations=3, method="random", seed=2)
    assert all(np.array_equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert any(not np.array_equal(a.masks[n], c.masks[n]) for n in a.masks)
    assert a.report.kept == round(0.2 * a.report.params)
    # Random pruning spreads evenly: every layer near the target density.
    assert all(abs(layer.density - 0.2) < 0.08 for layer in a.report.layers)


def test_synflow_differs_from_both_baselines() -> None:
    model = netgen.cifar_resnet(20)
    masks = {
        m: onnxflow.prune(model, sparsity=0.9, iterations=3, method=m).masks
        for m in ("synflow", "magnitude", "random")
    }
    for other in ("magnitude", "random"):
        assert any(
            not np.array_equal(masks["synflow"][n], masks[other][n]) for n in masks["synflow"]
        )


def test_excluded_weights_are_never_pruned_and_not_counted() -> None:
    model = netgen.cifar_resnet(20)
    w = weights(model)
    result = onnxflow.prune(model, sparsity=0.9, iterations=3, exclude=("fc.*", "*downsample*"))
    excluded = {"fc.weight", "layer2.0.downsample.0.weight", "layer3.0.downsample.0.weight"}
    assert excluded.isdisjoint(result.masks)
    n = sum(v.size for k, v in w.items() if k not in excluded)
    assert result.report.params == n and result.report.kept == round(0.1 * n)
    pruned = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    for name in excluded:
        np.testing.assert_array_equal(pruned[name], w[name])


def test_exclude_matches_node_names_and_can_exclude_everything() -> None:
    model = netgen.cifar_resnet(20)
    node = onnxflow.score(model).dag.layer("conv1.weight").nodes[0]
    result = onnxflow.prune(model, sparsity=0.5, iterations=2, exclude=(node,))
    assert "conv1.weight" not in result.masks
    with pytest.raises(onnxflow.OnnxflowError, match=r"not excluded by exclude=\(.\*.,\)"):
        onnxflow.prune(model, sparsity=0.5, exclude=("*",))


def test_cli_method_and_exclude(tmp_path, capsys) -> None:
    import onnx

    path = tmp_path / "r.onnx"
    onnx.save(netgen.cifar_resnet(20), path)
    assert (
        main(
            [
                "prune",
                str(path),
                "--sparsity",
                "0.5",
                "--iterations",
                "2",
                "-q",
                "--method",
                "random",
                "--seed",
                "3",
                "--exclude",
                "fc.*",
                "--report",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["options"]["method"] == "random" and report["options"]["seed"] == 3
    assert report["options"]["exclude"] == ["fc.*"]
    assert "fc.weight" not in {layer["name"] for layer in report["layers"]}
    assert main(["prune", str(path), "--sparsity", "0.5", "--method", "snip"]) == 2
    assert "method" in capsys.readouterr().err


def test_min_kept_leaves_no_layer_below_k() -> None:
    model = netgen.vgg("vgg11", batch_norm=True, width_div=4, num_classes=100)
    collapsed = onnxflow.prune(model, compression=3.5, iterations=1, method="magnitude")
    assert collapsed.report.emptied  # one-shot magnitude empties layers here ...
    held = onnxflow.prune(model, compression=3.5, iterations=1, method="magnitude", min_kept=3)
    assert all(layer.kept >= 3 for layer in held.report.layers)  # ... not with --min-kept
    assert held.report.kept == collapsed.report.kept  # still exactly round(d * N)
    big = onnxflow.prune(model, compression=5, iterations=2, min_kept=50)
    assert all(layer.kept >= 50 for layer in big.report.layers)  # the floor wins over d*N
    with pytest.raises(onnxflow.OnnxflowError, match="min_kept must be an integer >= 0, got -1"):
        onnxflow.prune(model, sparsity=0.5, min_kept=-1)
