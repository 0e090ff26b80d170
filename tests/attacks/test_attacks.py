"""The attack suite: every scenario's verdict, judged by its effect, is the expected one."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from secvma.attacks.scenarios import ATTACKS, Verdict
from secvma.attacks.suite import POLICIES, run_suite
from secvma.cli import main

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def suite() -> dict[str, object]:
    return run_suite()


def test_every_attack_works_without_a_hypervisor(suite: dict) -> None:
    """Under `none` every scenario achieves its effect: the attacks are real."""
    none = [o for o in suite["outcomes"] if o["policy"] == "none"]
    assert len(none) == len(ATTACKS)
    assert all(o["verdict"] == Verdict.SUCCEEDED.value for o in none), none


def test_hardened_blocks_every_attack(suite: dict) -> None:
    """Under `hardened` no scenario achieves its effect."""
    hard = [o for o in suite["outcomes"] if o["policy"] == "hardened"]
    assert all(o["verdict"] != Verdict.SUCCEEDED.value for o in hard), hard
    # PXN is forced on (a fix-up, not a refusal) for the code-injection scenarios; every other
    # attack is stopped by a logged refusal
    fixed_up = {"exec-injected-code", "narrow-store-pxn-bypass", "stxr-drops-pxn"}
    assert all(o["refusals"] for o in hard if o["attack"] not in fixed_up), hard


def test_secvma2024_leaves_exactly_the_reproduced_gaps_open(suite: dict) -> None:
    """`secvma2024` blocks the design's attacks and lets through only the §11 gap scenarios."""
    open_ = {o["attack"] for o in suite["outcomes"]
             if o["policy"] == "secvma2024" and o["verdict"] == Verdict.SUCCEEDED.value}
    assert open_ == {a.name for a in ATTACKS if a.gap}


def test_every_verdict_is_the_expected_one(suite: dict) -> None:
    """Each (scenario, policy) outcome matches the scenario's expectation."""
    assert len(suite["outcomes"]) == len(ATTACKS) * len(POLICIES)
    bad = [o for o in suite["outcomes"] if not o["matches"]]
    assert suite["ok"] and not bad, bad


def test_attack_cli_json_runs_one_scenario() -> None:
    """`secvma attack --only NAME --policy hardened --json` reports that scenario."""
    res = CliRunner().invoke(main, ["attack", "--only", "forge-ttbr1", "--policy", "hardened", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert [o["attack"] for o in out["outcomes"]] == ["forge-ttbr1"]
    assert out["outcomes"][0]["verdict"] == "blocked"


def test_attack_cli_rejects_an_unknown_scenario() -> None:
    """An unknown scenario name exits 2 and points at --list."""
    res = CliRunner().invoke(main, ["attack", "--only", "nope"])
    assert res.exit_code == 2 and "--list" in res.output
