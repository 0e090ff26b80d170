"""Shared fixtures for the KPCore logic tests (fake machine, both policies)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeMachine

from secvma.kpcore import KPCore, make_policy


def booted(policy: str = "hardened", s2: str = "huge") -> tuple[FakeMachine, KPCore]:
    hv = make_policy(policy, s2=s2)
    return FakeMachine(hv), hv


@pytest.fixture(params=["hardened", "secvma2024"])
def any_policy(request: pytest.FixtureRequest) -> str:
    return str(request.param)
