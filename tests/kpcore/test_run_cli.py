"""`secvma run --check-invariants`: invariants after every trap, from the command line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from secvma.cli import main

pytestmark = pytest.mark.qemu


def test_check_invariants_runs_a_workload_clean() -> None:
    """Under hardened with --check-invariants a legal workload has no refusal and no violation."""
    res = CliRunner().invoke(main, ["run", "--policy", "hardened", "--workload", "faults",
                                    "--check-invariants", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["workloads"]["faults"]["ok"]
    assert out["refusals"] == 0 and out["invariant_violations"] == 0


def test_check_invariants_needs_a_kpcore_policy() -> None:
    """--check-invariants with --policy none is a usage error that names the fix."""
    res = CliRunner().invoke(main, ["run", "--policy", "none", "--check-invariants"])
    assert res.exit_code == 2 and "--policy hardened" in res.output
