"""The testbed kernel on QEMU's `-cpu max` (FEAT_XNX read from ID_AA64MMFR1_EL1)."""

from __future__ import annotations

import pytest

from secvma.attacks.scenarios import ATTACKS, Verdict
from secvma.attacks.suite import run_attack
from secvma.testbed.build import TestbedImage
from secvma.testbed.policies import make_hypervisor
from secvma.testbed.run import run_workloads

pytestmark = pytest.mark.qemu


def test_hardened_on_max_runs_every_workload(testbed: TestbedImage) -> None:
    """Before the fix the testbed stopped at start_kernel: its init text was KERNEL at stage 2
    (XN = 01), which a FEAT_XNX CPU does not let EL1 run (refused as s2-permission, earlier a
    livelock). Init text is now KCODE until free_initmem unmaps it."""
    hv = make_hypervisor("hardened", "huge", check_invariants=True)
    rep = run_workloads(hv, ["all"], policy="hardened", s2="huge", image=testbed, cpu="max")
    assert rep.exit == "poweroff", rep.reason
    assert all(w.ok for w in rep.workloads.values()), rep.workloads
    assert not rep.refusals and not rep.invariant_violations and not rep.internal_errors
    assert rep.cpu == "max" and rep.feat_xnx and rep.ok


def test_a_stage1_gap_of_secvma2024_is_closed_by_stage2_on_max(testbed: TestbedImage) -> None:
    """`narrow-store-pxn-bypass` (gap 1: a 4-byte PTE store drops PXN) succeeds under
    secvma2024 on cortex-a57, where ordinary memory is executable at stage 2. On max the data
    page is KERNEL kind (XN = 01): the EL1 fetch is a stage-2 instruction abort, refused."""
    attack = next(a for a in ATTACKS if a.name == "narrow-store-pxn-bypass")
    o = run_attack(attack, "secvma2024", "huge", testbed, cpu="max")
    assert o.feat_xnx
    assert o.verdict is not Verdict.SUCCEEDED, o.detail
    assert any("s2-permission" in r and "fetch" in r for r in o.refusals), o.refusals
