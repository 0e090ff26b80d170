"""The attack suite: every scenario's verdict, judged by its effect, is the expected one."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from secvma.attacks.scenarios import ATTACKS, Verdict
from secvma.attacks.suite import POLICIES, run_suite
from secvma.cli import main

pytestmark = pytest.mark.qemu


UP = [a for a in ATTACKS if a.ncpus == 1]
"""The single-CPU scenarios. The SMP races (`race-*`, two CPUs) depend on the host scheduling
both vCPU threads into the window, so tests/attacks/test_smp_races.py runs them, rerunning a
run in which the race did not happen."""


S2_POLICIES = {"huge": POLICIES, "4k": tuple(p for p in POLICIES if p != "none")}
"""`none` has no stage 2 of its own (TestbedNullHypervisor ignores the mode): its 4k run would
repeat the huge one boot for boot, so the 4 KB mode runs the two KPCore policies."""


@pytest.fixture(scope="module", params=["huge", "4k"])
def suite(request: pytest.FixtureRequest) -> dict[str, object]:
    """The single-CPU catalogue under every policy with a stage 2, in both mapping modes."""
    s2 = str(request.param)
    return {**run_suite(S2_POLICIES[s2], only=tuple(a.name for a in UP), s2=s2), "s2": s2}


def test_none_ignores_the_stage2_mode() -> None:
    """What lets the 4 KB run leave `none` out: its hypervisor is the same for both modes."""
    from secvma.testbed.policies import make_hypervisor

    assert type(make_hypervisor("none", "4k")) is type(make_hypervisor("none", "huge"))
    assert not hasattr(make_hypervisor("none", "4k"), "s2")


def test_the_catalogue_covers_the_threat_model() -> None:
    """At least 40 scenarios, names unique, every class of the threat model represented."""
    names = [a.name for a in ATTACKS]
    assert len(names) >= 40 and len(set(names)) == len(names)
    for prefix in ("pte-", "table-", "bbm-", "hvc35-", "hvc6-", "sctlr-", "tcr-", "mair-",
                   "load-", "module-", "write-", "forge-", "direct-", "stub-"):
        assert any(n.startswith(prefix) for n in names), prefix


def test_every_attack_works_without_a_hypervisor(suite: dict) -> None:
    """Under `none` every scenario achieves its effect: the attacks are real."""
    none = [o for o in suite["outcomes"] if o["policy"] == "none"]
    if suite["s2"] == "4k":
        assert not none  # see S2_POLICIES: `none` ran in the huge suite
        return
    assert len(none) == len(UP)
    assert all(o["verdict"] == Verdict.SUCCEEDED.value for o in none), none


def test_hardened_blocks_every_attack(suite: dict) -> None:
    """Under `hardened` no scenario achieves its effect."""
    hard = [o for o in suite["outcomes"] if o["policy"] == "hardened"]
    assert all(o["verdict"] != Verdict.SUCCEEDED.value for o in hard), hard
    # a scenario that says how hardened takes the effect away without refusing (PXN forced on
    # an emulated store) may show no refusal; every other attack is stopped by a logged refusal
    fixed_up = {a.name for a in UP if a.fixed_up}
    assert all(o["refusals"] for o in hard if o["attack"] not in fixed_up), hard
    assert all(o["verdict"] == Verdict.BLOCKED.value for o in hard), hard  # refused, never halted


def test_secvma2024_leaves_exactly_the_reproduced_gaps_open(suite: dict) -> None:
    """`secvma2024` blocks the design's attacks and lets through only the §11 gap scenarios."""
    open_ = {o["attack"] for o in suite["outcomes"]
             if o["policy"] == "secvma2024" and o["verdict"] == Verdict.SUCCEEDED.value}
    assert open_ == {a.name for a in UP if a.gap}


def test_every_verdict_is_the_expected_one(suite: dict) -> None:
    """Each (scenario, policy) outcome matches the scenario's expectation."""
    assert len(suite["outcomes"]) == len(UP) * len(S2_POLICIES[suite["s2"]])
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


def test_attack_report_writes_markdown_and_a_png_matrix(tmp_path: object) -> None:
    """`secvma attack --only NAME --report FILE.md`: the table per policy, evidence, FILE.png."""
    from pathlib import Path

    out = Path(str(tmp_path)) / "attacks.md"
    res = CliRunner().invoke(main, ["attack", "--only", "direct-ttbr0", "--report", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "| direct-ttbr0 |" in text and "every verdict as expected" in text
    assert "`ttbr0`" in text  # the rule hardened refused with
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "![verdict matrix](attacks.png)" in text
