"""The stock Debian kernel under `transparent` on QEMU's `-cpu max` (issue 10 item 1).

`max` brings FEAT_XNX (stage 2 then keeps EL1 from running anything but kernel and
authenticated module text), PAuth, BTI, LSE atomics, E0PD, HAFDBS... The kernel changes
SCTLR/TCR feature bits after the pins were taken (`kpcore.pins`), clears kernel PTEs with SWP,
and patches the PAuth entry code's alternatives; all of it must pass with nothing refused.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from secvma import fixtures as fx
from secvma.attacks.scenarios import Verdict
from secvma.cli import main
from secvma.kpcore.transparent import TransparentKPCore
from secvma.linux.attacks import judge
from secvma.linux.guestbuild import LinuxGuest, build_linux_guest
from secvma.linux.session import (
    WORKLOADS,
    boot_linux,
    internal_errors_of,
    make_linux_hypervisor,
    refusals_of,
    run_linux_workloads,
)

pytestmark = [pytest.mark.qemu, pytest.mark.debian, pytest.mark.slow]


@pytest.fixture(scope="module")
def guest(debian: fx.FixtureSet) -> LinuxGuest:
    return build_linux_guest(debian)


def test_transparent_on_max_runs_workloads_with_nothing_refused(debian: fx.FixtureSet) -> None:
    """Before this change the boot stopped at the first SCTLR write after the pin (PAuth key
    enables), then at BT0/BT1, UCT, SPAN, TCR.HD; the vunmap path oopsed on a refused SWP; the
    PAuth entry alternatives were refused and put back (20 text-patch refusals)."""
    r = run_linux_workloads("transparent", "huge", 1, ("forkexec", "mmap", "modules"),
                            check_invariants=True, cpu="max")
    assert r.exit == "poweroff", r.reason
    assert all(w.ok for w in r.workloads.values()), r.workloads
    assert r.refusals == [] and r.invariant_violations == [] and r.internal_errors == []
    assert r.feat_xnx and r.cpu == "max"
    assert r.protection["text_patches_refused"] == 0
    assert r.kpcore_stats.get("pin_let_through.SCTLR_EL1", 0) > 0  # PAuth keys per task
    assert "Oops" not in r.console and "Internal error" not in r.console
    assert r.ok


def test_transparent_on_max_smp2_all_workloads(debian: fx.FixtureSet) -> None:
    """-smp 2: the secondary CPU is locked on the SCTLR value it wrote (ITFSB set, RES0 without
    MTE) and later writes back the hardware's: refused (pinned-sysreg on cpu1) before ITFSB and
    the other MTE controls were let through."""
    r = run_linux_workloads("transparent", "huge", 2, WORKLOADS, check_invariants=True,
                            cpu="max")
    assert all(w.ok for w in r.workloads.values()), r.workloads
    assert r.refusals == [] and r.invariant_violations == [] and r.ok


def _exec_data(guest: LinuxGuest, cpu: str) -> tuple[Verdict, str, list[dict[str, object]]]:
    hv = make_linux_hypervisor("transparent", guest=guest)
    assert isinstance(hv, TransparentKPCore)
    hv.stage1_pxn = False  # a hole in the stage-1 rules: PXN is no longer forced
    res = boot_linux(hv, "SECVMA_ATTACK=EXEC_DATA", guest=guest, cpu=cpu, timeout_s=400)
    verdict, detail = judge(res.console, "EXEC_DATA", res.exit, internal_errors_of(hv))
    return verdict, detail, refusals_of(hv)


def test_stage2_alone_stops_exec_data_with_feat_xnx(guest: LinuxGuest) -> None:
    """With stage 1's PXN rule switched off, EXEC_DATA clears PXN on a data page and calls it:
    on `max` the fetch is a stage-2 instruction abort (XN = 01: EL0 only) that kpcore refuses
    (s2-permission, fetch); the attack is blocked and the machine goes on. On cortex-a57
    (no FEAT_XNX, XN[0] ignored) the same attack succeeds: there stage 1 is the only line."""
    verdict, detail, refusals = _exec_data(guest, "max")
    assert verdict is Verdict.BLOCKED, detail
    fetches = [r for r in refusals if r["rule"] == "s2-permission" and "fetch" in str(r["reason"])]
    assert fetches, refusals
    verdict57, detail57, _ = _exec_data(guest, "cortex-a57")
    assert verdict57 is Verdict.SUCCEEDED, detail57


def test_cli_reports_cpu_and_feat_xnx(debian: fx.FixtureSet) -> None:
    res = CliRunner().invoke(main, ["run", "--guest", "linux", "--policy", "none", "--cpu", "max",
                                    "--workload", "threads", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["cpu"] == "max" and data["feat_xnx"] is False  # none relies on no stage 2 XN
    assert data["ok"] is True
