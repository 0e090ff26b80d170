"""Shared fixtures of the module tests: the Debian fixture set, fetched once per session."""

from __future__ import annotations

import shutil

import pytest

from secvma import fixtures as fx


@pytest.fixture(scope="session")
def debian() -> fx.FixtureSet:
    """The pinned Debian arm64 fixture set; skips only when the archive cannot be reached."""
    try:
        return fx.fetch()
    except fx.FixturesUnavailable as exc:
        pytest.skip(f"Debian fixtures unavailable: {exc}")


@pytest.fixture(scope="session")
def binutils() -> dict[str, str]:
    """Paths of aarch64-linux-gnu-as/ld; skips when the cross binutils are not installed."""
    tools = {t: shutil.which(f"aarch64-linux-gnu-{t}") for t in ("as", "ld")}
    missing = [t for t, p in tools.items() if p is None]
    if missing:
        pytest.skip(f"aarch64-linux-gnu-{'/'.join(missing)} not installed "
                    "(apt-get install binutils-aarch64-linux-gnu)")
    return {t: str(p) for t, p in tools.items()}
