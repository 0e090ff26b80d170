"""Skips that cannot hide breakage: only an absent tool skips; CI requires the fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from secvma import fixtures as fx

HERE = Path(__file__).parent


def _unreachable(force: bool = False) -> fx.FixtureSet:
    raise fx.FixturesUnavailable("the archive cannot be reached (test)")


@pytest.mark.parametrize(("require", "outcome"), [("1", {"errors": 1}), ("0", {"skipped": 1}),
                                                  ("", {"skipped": 1})])
def test_the_debian_fixture_fails_when_required_and_skips_otherwise(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, require: str,
        outcome: dict[str, int]) -> None:
    """With SECVMA_REQUIRE_FIXTURES=1 (CI, scripts/test.sh) a failed fetch is an error."""
    monkeypatch.setattr(fx, "fetch", _unreachable)
    monkeypatch.setenv(fx.REQUIRE_ENV, require)
    pytester.makeconftest((HERE / "conftest.py").read_text())
    pytester.makepyfile("def test_needs_debian(debian):\n    assert debian\n")
    res = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    res.assert_outcomes(**outcome)
    if require == "1":
        res.stdout.fnmatch_lines(["*Debian fixtures unavailable but required*"])


def test_ci_and_the_test_command_require_the_fixtures() -> None:
    """`.ci/run` and `scripts/test.sh` set SECVMA_REQUIRE_FIXTURES=1; setup.sh then fails loudly."""
    root = HERE.parent
    assert "export SECVMA_REQUIRE_FIXTURES=1" in (root / ".ci" / "run").read_text()
    assert "SECVMA_REQUIRE_FIXTURES=${SECVMA_REQUIRE_FIXTURES:-1}" in \
        (root / "scripts" / "test.sh").read_text()
    setup = (root / "scripts" / "setup.sh").read_text()
    assert '"${SECVMA_REQUIRE_FIXTURES:-0}" = 1' in setup and "exit 1" in setup
