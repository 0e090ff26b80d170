"""The testbed kernel on QEMU's `-cpu max` (FEAT_XNX read from ID_AA64MMFR1_EL1)."""

from __future__ import annotations

import pytest

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


def test_secvma2024_cannot_boot_the_testbed_on_max(testbed: TestbedImage) -> None:
    """A finding, kept as C has it: SECvma maps init text RW and EL1-execute-never at stage 2
    (spec §2.2), but the testbed still runs init text after HVC 6; a FEAT_XNX CPU refuses that
    fetch (s2-permission), so under secvma2024 the testbed stops at boot on max."""
    rep = run_workloads(make_hypervisor("secvma2024", "huge"), ["faults"], policy="secvma2024",
                        s2="huge", image=testbed, cpu="max")
    assert not rep.workloads["faults"].ok
    assert any("s2-permission" in r and "EL1_INIT" in r for r in rep.refusals), rep.refusals
