"""Shared pytest options."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-examples",
        type=int,
        default=200,
        help="mutated models per fuzz test (CI: 200; a longer run: 5000)",
    )


@pytest.fixture(autouse=True)
def _no_rule_leaks() -> Iterator[None]:
    """A test that needs a flow rule registers it on its own registry (a copy of the
    default, passed as `rules=`, or swapped in with monkeypatch): the default registry is
    the same after every test, so nothing leaks into later tests."""
    from onnxflow.flow import registry

    before = registry.default_rules().snapshot()
    yield
    assert registry.default_rules().snapshot() == before, "a test changed the default rules"
