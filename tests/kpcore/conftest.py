"""Shared fixtures for the KPCore logic tests (fake machine, both policies)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(params=["hardened", "secvma2024"])
def any_policy(request: pytest.FixtureRequest) -> str:
    return str(request.param)
