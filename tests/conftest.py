"""Fixtures shared by every test area."""

from __future__ import annotations

import pytest

from secvma import fixtures as fx


@pytest.fixture(scope="session")
def debian() -> fx.FixtureSet:
    """The pinned Debian arm64 fixture set; skips only when the archive cannot be reached."""
    try:
        return fx.fetch()
    except fx.FixturesUnavailable as exc:
        pytest.skip(f"Debian fixtures unavailable: {exc}")
