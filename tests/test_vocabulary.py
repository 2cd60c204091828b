"""The library speaks in option fields; the CLI maps them to flags (cli.FLAGS)."""

from __future__ import annotations

import inspect
from pathlib import Path

import click
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxflow
from onnxflow import cli, options
from onnxflow.errors import OnnxflowError, Opt
from onnxflow.save import check_output_paths


def tiny_matmul(inner: int = 3) -> onnx.ModelProto:
    """x[1, inner] @ W[inner, 4] -> y: one prunable layer whose input channels number `inner`."""
    w = numpy_helper.from_array(
        np.arange(1, 4 * inner + 1, dtype=np.float32).reshape(inner, 4), "w"
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, inner])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def _no_flags(e: pytest.ExceptionInfo[OnnxflowError]) -> str:
    message = str(e.value)
    assert "--" not in message, message
    return message


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        (
            {"provider": "bogus"},
            "provider",
            "provider must be 'auto', 'cpu' or 'cuda', got 'bogus'",
        ),
        ({"schedule": "cosine"}, "schedule", "schedule must be 'exponential' or 'linear'"),
        ({"zero_init": "zeros"}, "zero_init", "zero_init must be 'ones' or 'strict'"),
        ({"min_kept": -1}, "min_kept", "min_kept must be an integer >= 0, got -1"),
        ({"pattern": (4, 2)}, "pattern", "pattern must be (N, M) with integers 1 <= N < M"),
        ({"pattern": "2:4"}, "pattern", "got '2:4'"),
        ({"input_shapes": {"x": (1, 0)}}, "input_shapes", "input_shapes for 'x' must be"),
        ({"granularity": "block"}, "granularity", "must be 'weight' or 'channel', got 'block'"),
    ],
)
def test_option_errors_name_the_field_not_a_flag(
    kwargs: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(OnnxflowError) as e:
        onnxflow.prune(tiny_matmul(), sparsity=0.5, iterations=1, **kwargs)
    assert words in _no_flags(e)
    assert e.value.field == field


def test_errors_found_while_pruning_name_the_field_and_value() -> None:
    with pytest.raises(OnnxflowError) as e:  # 3 input channels: no group of 4
        onnxflow.prune(tiny_matmul(3), pattern=(2, 4), iterations=1)
    assert _no_flags(e).startswith("pattern=(2, 4) fits no layer")
    assert e.value.field == "pattern"
    with pytest.raises(OnnxflowError) as e:
        onnxflow.prune(tiny_matmul(4), pattern=(1, 2), sparsity=0.2, iterations=1)
    assert _no_flags(e).startswith("sparsity 0.2 contradicts pattern=(1, 2), which already")
    with pytest.raises(OnnxflowError) as e:
        onnxflow.prune(tiny_matmul(), sparsity=0.5, iterations=1, input_shapes={"foo": (1, 3)})
    assert _no_flags(e).startswith("input_shapes names 'foo', but the model's inputs are ['x']")
    with pytest.raises(OnnxflowError) as e:
        onnxflow.prune(tiny_matmul(), sparsity=0.5, iterations=1, exclude=("*",))
    assert "not excluded by exclude=('*',)" in _no_flags(e)


def test_cli_writes_the_same_errors_with_its_flags() -> None:
    """One table (cli.FLAGS) turns each field into its flag and each value into its spelling."""
    e = OnnxflowError("{opt} fits no layer", opt=Opt("pattern", (2, 4)))
    assert str(e) == "pattern=(2, 4) fits no layer"
    assert e.render(cli.flag) == "--pattern 2:4 fits no layer"
    e = OnnxflowError("{opt}: no usable CUDA device", opt=Opt("provider", "cuda"))
    assert (str(e), e.render(cli.flag)) == (
        "provider='cuda': no usable CUDA device",
        "--provider cuda: no usable CUDA device",
    )
    e = OnnxflowError("give {opt}", opt=Opt("input_shapes", {"x": (1, 3, "?", "?")}))
    assert e.render(cli.flag) == "give --input-shape x=1x3x?x?"
    # A field without a flag of its own, and user text with braces, print as they are.
    e = OnnxflowError("{opt} {path} is a directory", opt=Opt("output"), path=Path("{a}"))
    assert str(e) == e.render(cli.flag) == "output {a} is a directory"
    plain = OnnxflowError("sparsity must be a number in [0, 1), got {1}")
    assert plain.field is None and plain.render(cli.flag) == str(plain)


def test_output_paths_are_named_by_role(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    with pytest.raises(OnnxflowError) as e:
        check_output_paths(model, {"masks": model})
    assert _no_flags(e).startswith("masks ") and e.value.render(cli.flag).startswith("--masks ")
    with pytest.raises(OnnxflowError) as e:
        check_output_paths(model, {"masks": tmp_path / "a", "report": tmp_path / "a"})
    assert e.value.render(cli.flag).startswith("--report and --masks are the same file")


def test_every_mapped_field_is_a_real_option() -> None:
    """cli.FLAGS names only options the library has (PruneOptions fields, outputs, and the
    channel-mode arguments of `onnxflow.prune`) and flags the command has."""
    fields = {f for f in options.PruneOptions.__dataclass_fields__} | {
        "masks", "scores", "report", "plot", "channels"
    } | {"channel_multiple", "ranking"}  # fmt: skip
    assert {"channel_multiple", "ranking"} <= set(inspect.signature(onnxflow.prune).parameters)
    flags = {o for p in cli.prune.params for o in p.opts}
    for field, (flag, _) in cli.FLAGS.items():
        assert field in fields, field
        assert flag in flags, flag


def _param(name: str) -> click.Parameter:
    return next(p for p in cli.prune.params if p.name == name)


@pytest.mark.parametrize(
    ("param", "choices", "default"),
    [
        ("schedule", options.SCHEDULES, options.DEFAULTS.schedule),
        ("scope", options.SCOPES, options.DEFAULTS.scope),
        ("method", options.METHODS, options.DEFAULTS.method),
        ("provider", options.PROVIDERS, options.DEFAULTS.provider),
        ("zero_init", options.ZERO_INITS, options.DEFAULTS.zero_init),
        ("granularity", options.GRANULARITIES, None),
        ("ranking", options.RANKINGS, None),
    ],
)
def test_cli_choices_and_defaults_come_from_the_options(
    param: str, choices: tuple[str, ...], default: str | None
) -> None:
    p = _param(param)
    assert isinstance(p.type, click.Choice)
    assert tuple(p.type.choices) == choices
    if default is not None:
        assert p.default == default
    for name in ("iterations", "seed", "min_kept"):
        assert _param(name).default == getattr(options.DEFAULTS, name)
