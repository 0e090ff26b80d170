"""End to end: the testbed kernel's workloads under KPCore on QEMU (real AArch64 at EL1/EL0).

A legal workload must never be refused and must never break an invariant, in every policy
and stage-2 mode. The `modules` workload goes through the in-hypervisor loader (HVC 30-32)
with a signature table made for this process (`testbed.keys.testbed_module_keys`).
"""

from __future__ import annotations

import shutil

import pytest

from secvma.kpcore import make_policy

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def _have_testbed() -> str | None:
    """Skip only without QEMU; a testbed that fails to build is a failure, not a skip."""
    if shutil.which("qemu-system-aarch64") is None:
        return "qemu-system-aarch64 not installed"
    from secvma.testbed.build import build_testbed

    build_testbed()
    return None


@pytest.mark.parametrize(("policy", "s2"), [("hardened", "huge"), ("hardened", "4k"),
                                            ("secvma2024", "huge"), ("secvma2024", "4k")])
def test_all_workloads_without_refusals_or_violations(policy: str, s2: str) -> None:
    """`secvma run --policy P --s2 S --workload all`: zero refusals, zero violations."""
    reason = _have_testbed()
    if reason:
        pytest.skip(reason)
    from secvma.testbed.keys import testbed_module_keys
    from secvma.testbed.run import run_workloads

    hv = make_policy(policy, s2=s2, check_invariants=True, module_keys=testbed_module_keys())
    rep = run_workloads(hv, ["all"], policy=policy, s2=s2, timeout_s=120)
    assert rep.exit == "poweroff", rep.reason
    assert not hv.internal_errors, hv.internal_errors
    assert not hv.refusals, [str(r) for r in hv.refusals]
    assert not hv.invariant_violations, [str(v) for v in hv.invariant_violations[:5]]
    for name, w in rep.workloads.items():
        assert w.ok, (name, w.message)
    assert "EL2 loader" in rep.workloads["modules"].message
    assert rep.traps.get("Stage2Abort", 0) > 0 and hv.state.installed
