"""One onnxruntime distribution: the plain wheel is the dependency, the GPU wheel an extra,
and having both (they share one module) is named with its fix."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest

from onnxflow import runtime

ROOT = Path(__file__).resolve().parent.parent


def test_plain_onnxruntime_is_the_dependency_and_the_gpu_wheel_an_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtimes = [d for d in project["dependencies"] if d.startswith("onnxruntime")]
    assert runtimes == ["onnxruntime>=1.18"]
    assert project["optional-dependencies"]["gpu"] == ["onnxruntime-gpu>=1.18"]
    assert not any("onnxruntime" in d for d in project["optional-dependencies"]["test"])


def fake_versions(monkeypatch: pytest.MonkeyPatch, installed: dict[str, str]) -> None:
    def version(name: str) -> str:
        if name in installed:
            return installed[name]
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(runtime.importlib.metadata, "version", version)


def test_both_wheels_installed_is_explained_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_versions(monkeypatch, {"onnxruntime": "1.20.0", "onnxruntime-gpu": "1.31.1"})
    message = runtime.several_runtimes_message()
    assert message is not None and "\n" not in message
    assert "onnxruntime 1.20.0, onnxruntime-gpu 1.31.1" in message
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in message


@pytest.mark.parametrize("installed", [{"onnxruntime": "1.20.0"}, {"onnxruntime-gpu": "1.31.1"}])
def test_one_wheel_is_silent(monkeypatch: pytest.MonkeyPatch, installed: dict[str, str]) -> None:
    fake_versions(monkeypatch, installed)
    assert runtime.several_runtimes_message() is None
    assert runtime.installed_runtimes() == [f"{k} {v}" for k, v in installed.items()]
