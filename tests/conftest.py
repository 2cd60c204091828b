"""Shared pytest options."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-examples",
        type=int,
        default=200,
        help="mutated models per fuzz test (CI: 200; a longer run: 5000)",
    )
