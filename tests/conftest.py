"""Fixtures shared by every test area."""

from __future__ import annotations

import pytest

from secvma import fixtures as fx

pytest_plugins = ("pytester",)


@pytest.fixture(scope="session")
def debian() -> fx.FixtureSet:
    """The pinned Debian arm64 fixture set; skips only when the archive cannot be reached and
    the fixtures are not required (`SECVMA_REQUIRE_FIXTURES=1`, set by CI: then it fails)."""
    try:
        return fx.fetch()
    except fx.FixturesUnavailable as exc:
        if fx.required():
            pytest.fail(f"Debian fixtures unavailable but required ({fx.REQUIRE_ENV}=1): {exc}",
                        pytrace=False)
        pytest.skip(f"Debian fixtures unavailable: {exc}")
