"""The documentation runs: README commands match CI, documented examples execute."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxflow
from onnxflow.flow import registry
from onnxflow.flow.registry import registered_ops

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, "README must start with a code block of commands"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_readme_starts_with_install_prune_and_test_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert "pip install" in commands[0] and "onnxflow prune models/" in commands[0]
    assert 'pip install ".[test]"' in commands[1] and "pytest" in commands[1]


def test_ci_runs_the_readme_commands_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in readme_commands():
        assert command in ci


def test_every_registered_op_is_documented() -> None:
    doc = (ROOT / "docs" / "flow_rules.md").read_text()
    missing = [op for domain, op in registered_ops() if not domain and op not in doc]
    assert not missing


def custom_op_model() -> onnx.ModelProto:
    """Conv -> com.example::MyScale -> Gemm, with the custom op's output shape annotated."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(5, 4 * 6 * 6)).astype(np.float32), "w2")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv"),
        helper.make_node("MyScale", ["c"], ["s"], name="scale", domain="com.example"),
        helper.make_node("Reshape", ["s", "shape"], ["r"], name="flat"),
        helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [w1, w2, shape],
        value_info=[helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 4, 6, 6])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    model.ir_version = 10
    return model


def _custom_op_examples() -> list[str]:
    """The two code blocks of docs/flow_rules.md's "Adding a rule for a custom op"."""
    text = (ROOT / "docs" / "flow_rules.md").read_text()
    section = text.split("## Adding a rule for a custom op", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, re.S)[:2]


def test_custom_op_needs_a_rule_and_the_documented_rule_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = custom_op_model()
    with pytest.raises(onnxflow.UnsupportedOpError, match=r"'MyScale'.*com\.example.*'scale'"):
        onnxflow.score(model)
    # The example registers into the default registry: give this test its own copy of it.
    monkeypatch.setattr(registry, "DEFAULT_RULES", registry.DEFAULT_RULES.copy())
    define, _ = _custom_op_examples()
    exec(compile(define, "docs/flow_rules.md", "exec"), {})  # registers MyScale
    scaled = onnxflow.score(model)
    # The rule multiplies every path by 3: R and every score triple.
    plain = custom_op_model()
    plain.graph.node[1].CopyFrom(helper.make_node("Identity", ["c"], ["s"], name="scale"))
    base = onnxflow.score(plain)
    assert scaled.log_flow == pytest.approx(base.log_flow + np.log(3.0), abs=1e-5)
    for name in ("w1", "w2"):
        np.testing.assert_allclose(
            scaled.log_scores[name], base.log_scores[name] + np.log(3.0), atol=1e-5
        )


def test_documented_own_registry_keeps_the_rule_local(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second example registers on a copy of the default registry: the rule works where
    the copy is passed and nowhere else."""
    define, local = _custom_op_examples()
    namespace: dict[str, object] = {}
    monkeypatch.setattr(registry, "DEFAULT_RULES", registry.DEFAULT_RULES.copy())
    exec(compile(define, "docs/flow_rules.md", "exec"), namespace)  # defines MyScale
    monkeypatch.undo()  # the default registry as it was: without MyScale
    model = custom_op_model()
    namespace["model"] = model
    exec(compile(local, "docs/flow_rules.md", "exec"), namespace)
    plain = custom_op_model()
    plain.graph.node[1].CopyFrom(helper.make_node("Identity", ["c"], ["s"], name="scale"))
    result = namespace["result"]
    assert isinstance(result, onnxflow.api.ScoreResult)
    assert result.log_flow == pytest.approx(onnxflow.score(plain).log_flow + np.log(3.0), abs=1e-5)
    assert registry.get_flow_rule("MyScale", "com.example") is None
    with pytest.raises(onnxflow.UnsupportedOpError, match="'MyScale'"):
        onnxflow.score(model)
