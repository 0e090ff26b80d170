"""`secvma attack --guest linux`: the secvma_lkdtm attacks on the unmodified Debian kernel.

Under `none` every attack must succeed (that shows it is real: it defeats the kernel's own
stage-1 protections). Under `transparent` every attack is blocked, costing the attacking task
an oops and not the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from secvma import fixtures as fx
from secvma.attacks.scenarios import Verdict
from secvma.cli import main
from secvma.linux.attacks import ATTACKS, NAMES, run_linux_attack, run_linux_suite
from secvma.linux.guestbuild import LinuxGuest, build_linux_guest

pytestmark = [pytest.mark.qemu, pytest.mark.debian, pytest.mark.slow]

@pytest.fixture(scope="module")
def guest(debian: fx.FixtureSet) -> LinuxGuest:
    return build_linux_guest(debian)


@pytest.fixture(scope="module")
def suite_none(guest: LinuxGuest) -> dict[str, object]:
    return run_linux_suite(("none",))


def test_every_attack_succeeds_without_a_hypervisor(suite_none: dict[str, object]) -> None:
    outcomes = suite_none["outcomes"]
    assert isinstance(outcomes, list)
    assert [o["attack"] for o in outcomes] == list(NAMES)
    for o in outcomes:
        assert o["verdict"] == Verdict.SUCCEEDED.value, f"{o['attack']}: {o['detail']}"
    assert suite_none["ok"] is True
    assert suite_none["summary"] == {"none": {"blocked": 0, "succeeded": len(NAMES),
                                              "internal_errors": 0, "unexpected": 0}}


def test_effects_are_measured_not_assumed(suite_none: dict[str, object]) -> None:
    by = {o["attack"]: o["detail"] for o in suite_none["outcomes"]}  # type: ignore[attr-defined]
    for name in ("EXEC_DATA", "EXEC_STACK", "EXEC_KMALLOC", "EXEC_VMALLOC", "EXEC_RODATA",
                 "EXEC_USERSPACE"):
        assert "returned 42" in by[name]
    for name in ("TTBR1_FORGE", "TTBR0_CRAFT", "SCTLR_WRITE", "VBAR_WRITE", "MDSCR_KDE"):
        assert "held" in by[name]
    assert "is Live" in by["UNSIGNED_MODULE"]
    marker = "00736563766d6100646d612161746b00"  # read back through the kernel's own mapping
    for name in ("DMA_TEXT", "DMA_RODATA", "DMA_PGTABLE", "DMA_MODTEXT"):
        assert f"bytes there {marker}" in by[name] and "READ into" in by[name]
    assert "the host found the marker" in by["DMA_HYP"]


@pytest.mark.parametrize("name", [a.name for a in ATTACKS if not a.gap])
def test_blocked_under_transparent_and_the_machine_goes_on(guest: LinuxGuest, name: str) -> None:
    attack = next(a for a in ATTACKS if a.name == name)
    o = run_linux_attack(attack, "transparent", guest)
    assert o.verdict is Verdict.BLOCKED, o.detail
    assert o.matches
    if attack.dma:  # reported from the SMMU's event queue
        assert any(r.startswith("dma-fault") for r in o.refusals), o.refusals


def test_no_attack_is_a_known_gap_under_transparent() -> None:
    """Every attack is expected blocked (a `gap` would make it expected to succeed)."""
    assert [a.name for a in ATTACKS if a.gap] == []


def test_cli_json_shape(guest: LinuxGuest, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["attack", "--guest", "linux", "--policy", "none", "--only",
                                    "SCTLR_WRITE", "--json", "--report", str(tmp_path / "r.md")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "r.md").read_text()
    assert "stock Debian kernel" in md and "| SCTLR_WRITE | change SCTLR_EL1 |" in md
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads(res.stdout)
    assert set(data) >= {"outcomes", "summary", "ok"}
    (o,) = data["outcomes"]
    assert o["attack"] == "SCTLR_WRITE" and o["policy"] == "none" and o["matches"] is True
    assert set(o) == {"attack", "policy", "verdict", "detail", "expected", "matches", "refusals",
                      "seconds", "cpu", "feat_xnx"}
    assert o["cpu"] == "cortex-a57" and o["feat_xnx"] is False


def test_cli_rejects_testbed_policy_and_unknown_attack() -> None:
    r = CliRunner().invoke(main, ["attack", "--guest", "linux", "--policy", "hardened"])
    assert r.exit_code != 0
    r = CliRunner().invoke(main, ["attack", "--guest", "linux", "--only", "NOPE"])
    assert r.exit_code != 0 and "unknown" in r.output
    r = CliRunner().invoke(main, ["attack", "--policy", "transparent"])
    assert r.exit_code != 0 and "--guest linux" in r.output


def test_dma_into_hypervisor_memory_is_stopped_by_the_smmu(guest: LinuxGuest,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """DMA_HYP through the stock kernel's own virtio-blk driver under transparent's identity map
    (registers-only policy here: armed transparent runs no module text until module
    authentication lands): the device's write faults in the SMMU, the fault is drained from the
    event queue into `refusals`, the host finds hypervisor memory unchanged, the machine goes on,
    and INV-DMA held after every trap."""
    from secvma.kpcore.transparent import TransparentKPCore
    from secvma.linux import attacks

    made: list[TransparentKPCore] = []

    def make(policy: str, s2: str = "huge", **_kw: object) -> TransparentKPCore:
        made.append(TransparentKPCore(protect_tables=False, check_invariants=True))
        return made[0]

    monkeypatch.setattr(attacks, "make_linux_hypervisor", make)
    o = run_linux_attack(next(a for a in ATTACKS if a.name == "DMA_HYP"), "transparent", guest)
    assert o.verdict is Verdict.BLOCKED and o.matches, o.detail
    assert "did not find the marker" in o.detail
    (hv,) = made
    faults = [r for r in hv.refusals if r.rule == "dma-fault"]
    assert faults and all(r.values["iova"] >> 12 == attacks.DMA_HYP_PA >> 12 for r in faults)
    assert not hv.invariant_violations and not hv.internal_errors
