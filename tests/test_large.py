"""Models with external data: loaded lazily, pruned, written back with a data file beside
the output. (The memory figure for a 3 GB model comes from benchmarks/large_model.py.)"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxflow
import onnxflow.external
import onnxflow.materialize
from onnxflow.cli import main

MODEL = Path(__file__).parents[1] / "models" / "resnet20.onnx"


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def external_copy(folder: Path, location: str = "ext.bin") -> Path:
    path = folder / "ext.onnx"
    onnx.save_model(
        onnx.load(MODEL),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return path


def outputs(path: Path) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    return sess.run(None, {sess.get_inputs()[0].name: x})


@pytest.mark.parametrize("lazy_bytes", [0, 16 << 20])
def test_external_model_prunes_to_an_external_model(tmp_path, monkeypatch, lazy_bytes) -> None:
    """lazy_bytes=0 leaves every initializer in its file until needed (the large-model path)."""
    monkeypatch.setattr(onnxflow.external, "LAZY_BYTES", lazy_bytes)
    src = external_copy(tmp_path)
    before = {p.name: sha(p) for p in tmp_path.iterdir()}
    argv = ["prune", str(src), "--sparsity", "0.95", "--iterations", "5", "-q"]
    assert main([*argv, "--masks", str(tmp_path / "m.npz")]) == 0
    assert {p.name: sha(p) for p in tmp_path.iterdir() if p.name in before} == before
    out, data = tmp_path / "ext.pruned.onnx", tmp_path / "ext.pruned.onnx.data"
    assert data.is_file()
    skeleton = onnx.load(out, load_external_data=False)
    big = [t for t in skeleton.graph.initializer if np.prod(t.dims) * 4 >= 1024]
    assert big and all(t.data_location == onnx.TensorProto.EXTERNAL for t in big)
    assert {e.value for t in big for e in t.external_data if e.key == "location"} == {data.name}
    onnx.checker.check_model(str(out))
    # The same pruning as from the model held in memory: same masks, same weights, same outputs.
    ref = onnxflow.prune(onnx.load(MODEL), sparsity=0.95, iterations=5)
    masks = np.load(tmp_path / "m.npz")
    assert set(masks.files) == set(ref.masks)
    for name in ref.masks:
        np.testing.assert_array_equal(masks[name], ref.masks[name])
    onnxflow.save(ref, tmp_path / "ref.onnx")
    pruned = onnx.load(out)
    want = {
        t.name: onnx.numpy_helper.to_array(t)
        for t in onnx.load(tmp_path / "ref.onnx").graph.initializer
    }
    for t in pruned.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), want[t.name])
    for a, b in zip(outputs(out), outputs(tmp_path / "ref.onnx"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_output_data_file_never_overwrites_the_input_data(tmp_path, capsys) -> None:
    src = external_copy(tmp_path, location="out.onnx.data")
    before = {p.name: sha(p) for p in tmp_path.iterdir()}
    code = main(["prune", str(src), "--sparsity", "0.9", "-o", str(tmp_path / "out.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is the input's external data" in err
    assert {p.name: sha(p) for p in tmp_path.iterdir()} == before


def test_a_model_over_the_protobuf_limit_is_written_with_external_data(tmp_path, monkeypatch):
    """In-memory inputs get external data when the output would be too large for protobuf
    (the limit is lowered here to keep the test small)."""
    monkeypatch.setattr(onnxflow.materialize, "EXTERNAL_OVER_BYTES", 100_000)
    result = onnxflow.prune(onnx.load(MODEL), sparsity=0.9, iterations=2)
    assert not result.report.external_data  # the input had none
    assert result.output.storage.external_data
    onnxflow.save(result, tmp_path / "p.onnx")
    assert (tmp_path / "p.onnx.data").stat().st_size > 1_000_000
    assert (tmp_path / "p.onnx").stat().st_size < 100_000
    onnx.checker.check_model(str(tmp_path / "p.onnx"))
    # The result in memory is left as it was: complete, with its data inline.
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in result.model.graph.initializer)
    # `save` follows the plan: the same model planned inline is written as one file.
    small = tmp_path / "small.onnx"
    inline = dataclasses.replace(result.output.storage, external_data=False)
    onnxflow.save(
        dataclasses.replace(result, output=dataclasses.replace(result.output, storage=inline)),
        small,
    )
    assert not (tmp_path / "small.onnx.data").exists()
    for a, b in zip(outputs(tmp_path / "p.onnx"), outputs(small), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_model_object_with_unloaded_external_data_is_refused(tmp_path) -> None:
    src = external_copy(tmp_path)
    model = onnx.load(src, load_external_data=False)
    with pytest.raises(onnxflow.OnnxflowError, match="pass the model's path"):
        onnxflow.prune(model, sparsity=0.9, iterations=2)


def test_model_bytes_is_exact_without_serializing_the_model() -> None:
    for path in [MODEL, *sorted((MODEL.parents[1] / "tests" / "exported").glob("*.onnx"))]:
        model = onnx.load(path)
        assert onnxflow.external.model_bytes(model) == model.ByteSize(), path.name
