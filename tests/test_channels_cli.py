"""`onnxflow prune --granularity channel` end to end: files, summary, and the one-line errors
(exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import channel_nets as nets
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxflow.cli import main
from onnxflow.passes.apply_masks import apply_masks


def write(path: Path, model: onnx.ModelProto) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def outputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def test_channel_mode_writes_compact_model_masks_report_and_groups(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path / "m.onnx", nets.basic_residual())
    out, masks, report, groups = (tmp_path / n for n in ("c.onnx", "m.npz", "r.json", "g.json"))
    argv = [
        "prune", str(src), "--granularity", "channel", "--sparsity", "0.5", "--iterations", "3",
        "-o", str(out), "--masks", str(masks), "--report", str(report), "--channels",
        str(groups), "--latency",
    ]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert (
        "channel pruning" in text
        and "speedup" in text
        and "frozen groups: 5 graph output" in text
        and all(len(line) <= 80 for line in text.splitlines()[1:])
    )
    original, compact = onnx.load(str(src)), onnx.load(str(out))
    assert out.stat().st_size < src.stat().st_size
    with np.load(masks) as z:
        mask = {k: z[k] for k in z.files}
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    a = outputs(apply_masks(original, mask), x)[0]
    b = outputs(compact, x)[0]
    np.testing.assert_allclose(b, a, atol=1e-4 * np.abs(a).max())
    r = json.loads(report.read_text())
    assert r["granularity"] == "channel" and r["removed_share"] >= 0.5
    assert r["params_after"] < r["params_before"] and r["flops_after"] < r["flops_before"]
    assert r["latency_before_ms"] > 0 and r["latency_after_ms"] > 0
    g = json.loads(groups.read_text())
    removed = [grp for grp in g["groups"] if grp["removed"]]
    assert removed and all(grp["prunable"] for grp in removed)
    frozen = [grp for grp in g["groups"] if grp["frozen"]]
    assert {tuple(grp["frozen"]) for grp in frozen} == {("graph output",)}
    first = removed[0]["members"][0]
    assert first["index"][0] not in g["kept"][first["tensor"]][str(first["axis"])]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pattern", "2:4"], "--pattern prunes weights"),
        (["--channel-multiple", "0"], "channel-multiple must be an integer >= 1"),
        (["--sparsity", "0.999"], "cannot be reached by removing channels: at most"),
        (["--scores", "s.npz"], "--scores: weight mode only"),
        (
            ["--sparse-storage", "--scope", "local", "--scores", "s.npz"],
            "--sparse-storage, --scope local, --scores: weight mode only, not with channel mode",
        ),
        (["--channel-multiple", "auto", "--ranking", "flow", "--min-kept", "2"], "--min-kept: "),
    ],
)
def test_errors_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    src = write(tmp_path / "m.onnx", nets.conv_chain())
    sparsity = [] if "--sparsity" in extra else ["--sparsity", "0.5"]
    argv = ["prune", str(src), "--granularity", "channel", "--iterations", "2", *sparsity, *extra]
    argv = [str(tmp_path / a) if a == "s.npz" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_no_prunable_group_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write(tmp_path / "m.onnx", nets.output_conv())
    assert main(["prune", str(src), "--granularity", "channel", "--sparsity", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: no prunable channel group: 4 groups, all frozen (4 graph output)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_channel_options_need_channel_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path / "m.onnx", nets.conv_chain())
    assert main(["prune", str(src), "--sparsity", "0.5", "--latency"]) == 2
    assert "need --granularity channel" in capsys.readouterr().err
