"""Bad input: exit 2, one line naming the problem, no output file, input unchanged.

The one table of bad inputs: every case runs through the CLI (with and without --quiet) and,
where the Python API can be given the same input, through `onnxflow.prune` (API_CASES), which
raises OnnxflowError and writes nothing. Every row of docs/errors.md is a case here
(test_docs_table_lists_every_case checks the two agree).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import channel_nets
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxflow
from onnxflow.cli import main

ROOT = Path(__file__).resolve().parent.parent


def small_model(weight_dims=(4, 3, 3, 3), input_shape=(1, 3, 8, 8), op="Relu") -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones(weight_dims, np.float32), "w")
    n, _, h, wd = input_shape
    out_shape = [n, weight_dims[0], h - 2, wd - 2]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node(op, ["c"], ["y"], name="act"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def external(tmp: Path, location: str, data_len: int | None = None, length: int | None = None):
    """A model whose weight lives in external data at `location` (relative to tmp)."""
    model = small_model()
    w = model.graph.initializer[0]
    raw = w.raw_data or np.ones((4, 3, 3, 3), np.float32).tobytes()
    target = tmp / location
    if data_len is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw[:data_len])
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": "0", "length": str(length or len(raw))}
    for k, v in entries.items():
        w.external_data.add(key=k, value=v)
    return model


Setup = Callable[[Path], tuple[Path, list[str]]]


def model_file(build: Callable[[Path], onnx.ModelProto | bytes], *extra: str) -> Setup:
    def setup(tmp: Path) -> tuple[Path, list[str]]:
        path = tmp / "m.onnx"
        built = build(tmp)
        path.write_bytes(built if isinstance(built, bytes) else built.SerializeToString())
        return path, ["prune", str(path), *extra]

    return setup


def _write(path: Path, data: bytes, *extra: str) -> tuple[Path, list[str]]:
    path.write_bytes(data)
    return path, ["prune", str(path), *extra]


def good(*extra: str) -> Setup:
    return model_file(lambda tmp: small_model(), *extra)


def zero_weights_model() -> onnx.ModelProto:
    """The small model with its only weight all zero (R = 0; nothing to prune)."""
    m = small_model()
    m.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    )
    return m


def no_graph_node(tmp: Path) -> onnx.ModelProto:
    m = small_model()
    del m.graph.node[:]
    return m


def checker_fails(tmp: Path) -> onnx.ModelProto:
    m = small_model()
    m.graph.node[1].input[0] = "undefined"
    return m


def ort_cannot_run(tmp: Path) -> onnx.ModelProto:
    """An op onnxruntime does not know, whose output shape nothing can infer."""
    m = small_model()
    m.graph.node[1].CopyFrom(
        helper.make_node("Mystery", ["c"], ["m"], name="mystery", domain="com.example")
    )
    m.graph.node.append(helper.make_node("Relu", ["m"], ["y"], name="act"))
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    return m


def no_weights(tmp: Path) -> onnx.ModelProto:
    m = small_model()
    m.graph.node[0].CopyFrom(helper.make_node("Relu", ["x"], ["c"], name="conv"))
    del m.graph.initializer[:]
    return m


def huge_declared_weight(tmp: Path) -> onnx.ModelProto:
    m = small_model()
    w = m.graph.initializer[0]
    del w.dims[:]
    w.dims.extend([100000, 100000, 3, 3])
    return m


def qdq_model() -> onnx.ModelProto:
    wq = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.int8), "wq")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "scale", "zp"], ["w"], name="dq"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        [wq, scale, zp],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


# id -> (setup, expected message regex)
CASES: dict[str, tuple[Setup, str]] = {
    "missing-path": (
        lambda tmp: (tmp / "m.onnx", ["prune", str(tmp / "nope.onnx"), "--sparsity", "0.5"]),
        r"no such file",
    ),
    "directory": (
        lambda tmp: (tmp / "m.onnx", ["prune", str(tmp), "--sparsity", "0.5"]),
        r"is a directory",
    ),
    "empty-file": (model_file(lambda tmp: b"", "--sparsity", "0.5"), r"is empty"),
    "random-bytes": (
        model_file(lambda tmp: np.random.default_rng(0).bytes(4096), "--sparsity", "0.5"),
        r"not a readable ONNX model|not an ONNX",
    ),
    "truncated": (
        model_file(lambda tmp: small_model().SerializeToString()[:150], "--sparsity", "0.5"),
        r"not a readable ONNX model|not an ONNX",
    ),
    "not-a-model": (
        model_file(
            lambda tmp: numpy_helper.from_array(np.ones(3, np.float32), "t").SerializeToString(),
            "--sparsity",
            "0.5",
        ),
        r"not an ONNX model|not a readable ONNX model",
    ),
    "json-file": (
        lambda tmp: _write(tmp / "m.json", b'{"layers": [1, 2]}', "--sparsity", "0.5"),
        r"m\.json is not a readable ONNX model \(Message type \"onnx\.ModelProto\" has no field",
    ),
    "text-file": (
        lambda tmp: _write(tmp / "m.textproto", b"hello world\n", "--sparsity", "0.5"),
        r"m\.textproto is not a readable ONNX model \(1:1 : Message type",
    ),
    "no-nodes": (model_file(no_graph_node, "--sparsity", "0.5"), r"no graph nodes"),
    "fails-checker": (model_file(checker_fails, "--sparsity", "0.5"), r"fails onnx.checker"),
    "onnxruntime-cannot-run": (
        model_file(ort_cannot_run, "--sparsity", "0.5"),
        r"onnxruntime cannot run the model",
    ),
    "no-flow-rule": (
        model_file(lambda tmp: small_model(op="Round"), "--sparsity", "0.5"),
        r"op 'Round'.*node 'act'.* has no flow rule",
    ),
    "no-prunable-weights": (
        model_file(no_weights, "--sparsity", "0.5"),
        r"has no prunable weights",
    ),
    "sparsity-one": (good("--sparsity", "1.0"), r"sparsity must be a number in \[0, 1\)"),
    "sparsity-negative": (good("--sparsity", "-0.1"), r"sparsity must be"),
    "sparsity-nan": (good("--sparsity", "nan"), r"sparsity must be"),
    "both-sparsity-and-compression": (
        good("--sparsity", "0.5", "--compression", "1"),
        r"exactly one of --sparsity or --compression",
    ),
    "pattern-malformed": (good("--pattern", "4:2"), r"--pattern '4:2': need integers 1 <= N < M"),
    "pattern-fits-no-layer": (
        good("--pattern", "2:4"),
        r"--pattern 2:4 fits no layer",
    ),
    "pattern-contradicts-sparsity": (
        model_file(
            lambda tmp: small_model(weight_dims=(4, 4, 3, 3), input_shape=(1, 4, 8, 8)),
            "--pattern",
            "1:2",
            "--sparsity",
            "0.2",
        ),
        r"sparsity 0.2 contradicts --pattern 1:2, which already prunes 0.5",
    ),
    "negative-compression": (good("--compression", "-1"), r"compression must be"),
    "zero-init-invalid": (
        good("--sparsity", "0.5", "--zero-init", "zeros"),
        r"Invalid value for '--zero-init': 'zeros' is not one of 'ones', 'strict'",
    ),
    "zero-weights-strict": (
        model_file(lambda tmp: zero_weights_model(), "--sparsity", "0.5", "--zero-init", "strict"),
        r"the network carries no synaptic flow \(R = 0\)",
    ),
    "zero-weights-only": (
        model_file(lambda tmp: zero_weights_model(), "--sparsity", "0.5"),
        r"has no prunable weights \(constant weights of Conv, ConvTranspose, Gemm or MatMul, "
        r"not all zero\)",
    ),
    "iterations-zero": (
        good("--sparsity", "0.5", "--iterations", "0"),
        r"iterations must be an integer >= 1",
    ),
    "input-shape-malformed": (
        good("--sparsity", "0.5", "--input-shape", "x=1xax3"),
        r"--input-shape",
    ),
    "input-shape-unknown-input": (
        good("--sparsity", "0.5", "--input-shape", "foo=1x3x8x8"),
        r"names 'foo'",
    ),
    "input-shape-wrong-rank": (
        good("--sparsity", "0.5", "--input-shape", "x=1x3x8"),
        r"has rank 3",
    ),
    "output-unwritable": (
        good("--sparsity", "0.5", "-o", "/proc/onnxflow-test.onnx"),
        r"onnxflow-test.onnx",
    ),
    "output-is-directory": (
        lambda tmp: (tmp / "m.onnx", good("--sparsity", "0.5", "-o", str(tmp))(tmp)[1]),
        r"is a directory",
    ),
    "output-is-input": (
        lambda tmp: (tmp / "m.onnx", good("--sparsity", "0.5", "-o", str(tmp / "m.onnx"))(tmp)[1]),
        r"is the input model",
    ),
    "external-data-outside-folder": (
        model_file(lambda tmp: external(tmp, "../secret.bin"), "--sparsity", "0.5"),
        r"points outside the model's folder",
    ),
    "external-data-absolute": (
        model_file(lambda tmp: external(tmp, "/etc/passwd"), "--sparsity", "0.5"),
        r"absolute location",
    ),
    "external-data-missing": (
        model_file(lambda tmp: external(tmp, "w.bin"), "--sparsity", "0.5"),
        r"is missing",
    ),
    "external-data-short": (
        model_file(lambda tmp: external(tmp, "w.bin", data_len=100), "--sparsity", "0.5"),
        r"shorter than declared",
    ),
    "declared-weight-too-large": (
        model_file(huge_declared_weight, "--sparsity", "0.5"),
        r"declares shape \[100000, 100000, 3, 3\]",
    ),
    "input-too-large": (
        model_file(lambda tmp: small_model(input_shape=(64, 3, 16384, 16384)), "--sparsity", "0.5"),
        r"would need .* GiB",
    ),
    "quantized-weights": (
        model_file(lambda tmp: qdq_model(), "--sparsity", "0.5"),
        r"m\.onnx has quantized weights \(node 'conv'",
    ),
    # CLI-only: argument parsing and the output paths the Python API does not take.
    "sparsity-inf": (good("--sparsity", "inf"), r"sparsity must be a number in \[0, 1\), got inf"),
    "sparsity-not-a-number": (good("--sparsity", "half"), r"'--sparsity'.*'half' is not a valid"),
    "sparsity-keeps-nothing": (
        good("--sparsity", "0.9999"),
        r"sparsity 0.9999 keeps round\(0.0001 \* 108\) = 0 of the prunable weights",
    ),
    "neither-sparsity-nor-compression": (good(), r"exactly one of --sparsity or --compression"),
    "schedule-invalid": (
        good("--sparsity", "0.5", "--schedule", "cosine"),
        r"Invalid value for '--schedule': 'cosine' is not one of",
    ),
    "unknown-option": (good("--sparsity", "0.5", "--frobnicate"), r"No such option '--frobnicate'"),
    "input-shape-without-equals": (
        good("--sparsity", "0.5", "--input-shape", "noequals"),
        r"--input-shape must look like NAME=1x3x224x224, got 'noequals'",
    ),
    "output-is-input-spelled-differently": (
        lambda tmp: (
            tmp / "m.onnx",
            good("--sparsity", "0.5", "-o", str(tmp / "." / "m.onnx"))(tmp)[1],
        ),
        r"is the input model; it is never overwritten",
    ),
    "masks-is-input": (
        lambda tmp: (
            tmp / "m.onnx",
            good("--sparsity", "0.5", "--masks", str(tmp / "m.onnx"))(tmp)[1],
        ),
        r"is the input model; it is never overwritten",
    ),
    "output-folder-missing": (
        lambda tmp: (
            tmp / "m.onnx",
            good("--sparsity", "0.5", "-o", str(tmp / "nope" / "x.onnx"))(tmp)[1],
        ),
        r"output .*/nope/x.onnx: folder .*/nope does not exist",
    ),
    "masks-same-as-report": (
        lambda tmp: (
            tmp / "m.onnx",
            good("--sparsity", "0.5", "--masks", str(tmp / "a"), "--report", str(tmp / "a"))(tmp)[
                1
            ],
        ),
        r"--report and --masks are the same file: .*/a$",
    ),
}

# Channel mode (--granularity channel; docs/channels.md).
CHANNEL = ("--granularity", "channel")
CASES.update(
    {
        "channel-no-prunable-group": (
            good(*CHANNEL, "--sparsity", "0.5"),
            r"no prunable channel group: 4 groups, all frozen \(4 graph output\)",
        ),
        "channel-unreachable-sparsity": (
            model_file(lambda tmp: channel_nets.conv_chain(), *CHANNEL, "--sparsity", "0.999"),
            r"sparsity 0.999 cannot be reached by removing channels: at most 0\.\d+ of the",
        ),
        "channel-multiple-below-one": (
            good(*CHANNEL, "--sparsity", "0.5", "--channel-multiple", "0"),
            r"^error: --channel-multiple must be an integer >= 1 or 'auto', got 0$",
        ),
        "channel-multiple-not-a-number": (
            good(*CHANNEL, "--sparsity", "0.5", "--channel-multiple", "x"),
            r"^error: --channel-multiple must be an integer >= 1 or 'auto', got 'x'$",
        ),
        "channel-with-pattern": (
            good(*CHANNEL, "--sparsity", "0.5", "--pattern", "2:4"),
            r"--pattern prunes weights; it cannot be combined with channel mode",
        ),
        "channel-weight-only-option": (
            good(*CHANNEL, "--sparsity", "0.5", "--sparse-storage"),
            r"--sparse-storage: weight mode only, not with channel mode",
        ),
        "channel-option-without-channel-mode": (
            good("--sparsity", "0.5", "--channel-multiple", "8"),
            r"--channels, --channel-multiple, --latency and --ranking need --granularity channel",
        ),
    }
)


CHANNEL_API: dict[str, Any] = {"sparsity": 0.5, "granularity": "channel"}
API_EXACTLY_ONE = r"exactly one of sparsity or compression"
API_SCHEDULE = r"schedule"


# The same inputs through the Python API: case id -> (keyword arguments of onnxflow.prune, the
# message regex where the library's words differ from the CLI's, else None). The model is
# the CLI's model argument. Library errors name option fields, not flags (test_vocabulary).
LOAD = {"sparsity": 0.5}
API_CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "missing-path": (LOAD, None),
    "directory": (LOAD, None),
    "empty-file": (LOAD, None),
    "random-bytes": (LOAD, None),
    "truncated": (LOAD, None),
    "not-a-model": (LOAD, None),
    "json-file": (LOAD, None),
    "text-file": (LOAD, None),
    "no-nodes": (LOAD, None),
    "fails-checker": (LOAD, None),
    "onnxruntime-cannot-run": (LOAD, None),
    "no-flow-rule": (LOAD, None),
    "no-prunable-weights": (LOAD, None),
    "zero-weights-only": (LOAD, None),
    "zero-weights-strict": ({"sparsity": 0.5, "zero_init": "strict"}, None),
    "external-data-outside-folder": (LOAD, None),
    "external-data-absolute": (LOAD, None),
    "external-data-missing": (LOAD, None),
    "external-data-short": (LOAD, None),
    "declared-weight-too-large": (LOAD, None),
    "input-too-large": (LOAD, None),
    "quantized-weights": (LOAD, None),
    "sparsity-one": ({"sparsity": 1.0}, None),
    "sparsity-negative": ({"sparsity": -0.1}, None),
    "sparsity-nan": ({"sparsity": float("nan")}, None),
    "sparsity-inf": ({"sparsity": float("inf")}, None),
    "sparsity-keeps-nothing": ({"sparsity": 0.9999}, None),
    "negative-compression": ({"compression": -1.0}, None),
    "iterations-zero": ({"sparsity": 0.5, "iterations": 0}, None),
    "both-sparsity-and-compression": ({"sparsity": 0.5, "compression": 1.0}, API_EXACTLY_ONE),
    "neither-sparsity-nor-compression": ({}, API_EXACTLY_ONE),
    "schedule-invalid": ({"sparsity": 0.5, "schedule": "cosine"}, API_SCHEDULE),
    # Channel mode: the library names the fields (channel_multiple=, pattern=, ...).
    "channel-no-prunable-group": (CHANNEL_API, None),
    "channel-unreachable-sparsity": ({**CHANNEL_API, "sparsity": 0.999}, None),
    "channel-multiple-below-one": (
        {**CHANNEL_API, "channel_multiple": 0},
        r"^channel_multiple must be an integer >= 1 or 'auto', got 0$",
    ),
    "channel-multiple-not-a-number": (
        {**CHANNEL_API, "channel_multiple": "x"},
        r"^channel_multiple must be an integer >= 1 or 'auto', got 'x'$",
    ),
    "channel-with-pattern": (
        {**CHANNEL_API, "pattern": (2, 4)},
        r"^pattern prunes weights; it cannot be combined with channel mode$",
    ),
    "channel-weight-only-option": (
        {**CHANNEL_API, "sparse_storage": True},
        r"^sparse_storage: weight mode only, not with channel mode$",
    ),
    "channel-option-without-channel-mode": (
        {"sparsity": 0.5, "channel_multiple": 8},
        r"^channel_multiple, latency and ranking need granularity='channel'$",
    ),
}


def digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@pytest.mark.parametrize("quiet", [False, True], ids=["loud", "quiet"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    case: str, quiet: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    setup, pattern = CASES[case]
    _, argv = setup(work)
    if quiet:
        argv = [*argv, "--quiet"]
    before = digest(work)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("error: ") and "Traceback" not in err and "internal error" not in err
    assert re.search(pattern, err), err
    assert digest(work) == before  # nothing written, input unchanged
    assert not (tmp_path / "secret.bin").exists()


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_bad_input_through_the_python_api_raises_and_writes_nothing(
    case: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    setup, cli_pattern = CASES[case]
    kwargs, api_pattern = API_CASES[case]
    _, argv = setup(work)
    before = digest(work)
    with pytest.raises(onnxflow.OnnxflowError) as raised:
        onnxflow.prune(argv[1], **kwargs)
    message = str(raised.value)
    assert "\n" not in message and "--" not in message, message
    assert re.search(api_pattern or cli_pattern, message), message
    assert digest(work) == before
    assert not (tmp_path / "secret.bin").exists()


def test_docs_table_lists_every_case() -> None:
    table = (ROOT / "docs" / "errors.md").read_text()
    rows = set(re.findall(r"^\| `([a-z0-9-]+)` \|", table, re.M))
    assert rows == set(CASES)
    assert set(API_CASES) <= set(CASES)


def test_quantized_weights_are_refused_with_a_clear_message() -> None:
    with pytest.raises(onnxflow.OnnxflowError, match=r"quantized weights \(node 'conv'"):
        onnxflow.prune(qdq_model(), sparsity=0.5)
