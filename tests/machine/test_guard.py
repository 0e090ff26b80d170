"""The interrupt guard on real QEMU: EL2 takes control at a bounded interval whatever EL1 does.

Mechanism (trampoline + mailbox) tested with payloads and both kernels; the policy side is in
tests/kpcore/test_guard.py and the attacks in secvma.attacks.scenarios (vbar-forge, mdscr-kde).
"""

from __future__ import annotations

import pytest

from secvma import fixtures as fx
from secvma.kpcore.transparent import TransparentKPCore
from secvma.machine.initramfs import INIT_BANNER, build_initramfs
from secvma.machine.null import NullHypervisor
from secvma.machine.qemu import MachineConfig
from secvma.machine.runner import boot
from secvma.platform import CpuStart, Event, GuardTrip, Hvc, Platform, SysReg, Vcpu
from secvma.testbed.commands import Command, Op, run_commands
from secvma.testbed.policies import make_hypervisor

from .payload import POWEROFF, Recorder, run

pytestmark = pytest.mark.qemu

GUARD_US = 1000


class Pinner(Recorder):
    """Arms the guard at start, pins VBAR_EL1 to what the payload reports (hvc #1), halts on a trip."""

    def __init__(self) -> None:
        super().__init__()
        self.trips: list[GuardTrip] = []

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        if isinstance(event, GuardTrip):
            self.trips.append(event)
            platform.halt(f"guard trip: {event.reg.name} = {event.value:#x}")
            return
        super().handle(platform, cpu, event)
        if isinstance(event, CpuStart):
            cpu.arm_guard(GUARD_US)
        elif isinstance(event, Hvc) and event.imm == 1:
            cpu.pin_sysreg(SysReg.VBAR_EL1, event.x[0])


def test_forged_vbar_caught_while_el1_masks_interrupts_and_never_traps() -> None:
    """EL1 masks every interrupt, forges VBAR_EL1 and spins: the EL2 timer still gets there."""
    res, h = run("""
        mrs x0, vbar_el1
        hvc #1
        msr daifset, #0xf
        mrs x1, vbar_el1
        add x1, x1, #0x80
        msr vbar_el1, x1
        isb
    1:  b 1b
    """, Pinner())
    assert isinstance(h, Pinner)
    assert res.exit == "halt" and len(h.trips) == 1, res.reason
    trip = h.trips[0]
    assert trip.reg is SysReg.VBAR_EL1 and trip.value == trip.pinned + 0x80
    assert res.guard is not None and res.guard.ticks >= 1 and res.guard.trips == 1


def test_guard_passes_matching_registers_without_python() -> None:
    """A pinned register left alone: interrupt exits are checked in EL2, no trip reaches Python."""
    res, h = run("""
        mrs x0, vbar_el1
        hvc #1
        mov x2, #0
        ldr x3, =2000000
    1:  add x2, x2, #1
        cmp x2, x3
        b.lo 1b
    """ + POWEROFF, Pinner())
    assert isinstance(h, Pinner)
    assert res.exit == "poweroff" and not h.trips
    assert res.guard is not None and res.guard.checks >= 1 and res.guard.trips == 0


@pytest.mark.parametrize("cpu", ["cortex-a57", "max"])
def test_guard_reports_fgt_as_the_cpu_has_it(cpu: str) -> None:
    """The FGT field the trampoline read at EL2 is ID_AA64MMFR0_EL1[59:56] as EL1 reads it."""
    h = Recorder()
    h.guard_us = GUARD_US
    res, _ = run("""
        mrs x0, id_aa64mmfr0_el1
        hvc #0xAA
    """ + POWEROFF, h, cpu=cpu)
    assert res.exit == "poweroff" and res.guard is not None
    assert res.guard.fgt == (h.reports[0][0] >> 56) & 0xF


def test_testbed_timer_preemption_through_the_guard() -> None:
    """hardened: kernbench (timer preemption through the GIC) runs with zero refusals and no trip."""
    hv = make_hypervisor("hardened")
    out = run_commands(hv, [Command(Op.WORKLOAD, name="kernbench")], timeout_s=180)
    assert out.results[0].ok, out.results[0].msg
    assert not hv.refusals  # type: ignore[attr-defined]
    g = out.run.guard
    assert g is not None and g.irqs > 0 and g.checks == g.irqs and g.trips == 0
    assert g.lr_overflow == 0


@pytest.mark.debian
@pytest.mark.slow
def test_debian_boots_with_the_guard_armed_smp2(debian: fx.FixtureSet) -> None:
    """NullHypervisor + guard, -smp 2: interrupts and IPIs reach Linux as virtual ones."""
    hyp = NullHypervisor(guard_us=10_000)
    res = boot(MachineConfig(kernel=debian.kernel_image, initrd=build_initramfs(), ncpus=2,
                             timeout_s=120), hyp, watch=(INIT_BANNER,))
    assert res.exit == "poweroff", res.console[-2000:]
    assert "smp: Brought up 1 node, 2 CPUs" in res.console
    assert INIT_BANNER.decode() in res.first_seen
    g = res.guard
    assert g is not None and g.armed_cpus == 2
    assert g.irqs > 0 and g.sgis > 0 and g.ticks > 0 and g.trips == 0 and g.lr_overflow == 0


@pytest.mark.debian
@pytest.mark.slow
@pytest.mark.parametrize("smp", [1, 2])
def test_debian_transparent_pins_vbar_with_zero_refusals(debian: fx.FixtureSet, smp: int) -> None:
    """transparent: VBAR_EL1 learned and pinned on every CPU, boot to /init, zero refusals."""
    hyp = TransparentKPCore(image=debian.kernel_image.read_bytes())  # its patch sites
    res = boot(MachineConfig(kernel=debian.kernel_image, initrd=build_initramfs(), ncpus=smp,
                             timeout_s=120), hyp, watch=(INIT_BANNER,))
    assert res.exit == "poweroff", res.console[-2000:]
    assert INIT_BANNER.decode() in res.first_seen
    assert hyp.st is not None and not hyp.st.refusals and not hyp.internal_errors
    assert 1 <= len(hyp.vbars.tables) <= 2
    assert hyp.vbars.seen_on == set(range(smp))
    assert res.guard is not None and res.guard.armed_cpus == smp


def test_guard_timer_reenabled_after_the_kernel_disabled_it() -> None:
    """EL1 disables the guard's PPI in its redistributor; the next interrupt exit turns it back on.

    The payload disables PPI 26, waits 50 ms (no tick can come), lets its own virtual timer
    fire once (an exit: the trampoline sees ticks stopped and re-enables PPI 26), then masks
    everything, forges VBAR_EL1 and spins: only the re-enabled guard timer can catch it.
    """
    gicr_sgi = 0x080A_0000 + 0x1_0000
    res, h = run(f"""
        mrs x0, vbar_el1
        hvc #1
        msr daifset, #0xf
        ldr x1, ={gicr_sgi:#x}
        mov w2, #(1 << 26)
        str w2, [x1, #0x180]            // GICR_ICENABLER0: guard timer off
        mrs x3, cntfrq_el0
        lsr x3, x3, #4                  // ~62 ms
        mrs x4, cntpct_el0
        add x4, x4, x3
    1:  mrs x5, cntpct_el0
        cmp x5, x4
        b.lo 1b
        mov w2, #(1 << 27)
        str w2, [x1, #0x80]             // GICR_IGROUPR0: virtual timer group 1
        str w2, [x1, #0x100]            // GICR_ISENABLER0: virtual timer on
        msr cntv_tval_el0, xzr
        mov x6, #1
        msr cntv_ctl_el0, x6            // fires now: one exit to EL2
        isb
        mrs x4, cntpct_el0
        lsr x3, x3, #4
        add x4, x4, x3
    2:  mrs x5, cntpct_el0
        cmp x5, x4
        b.lo 2b
        mrs x1, vbar_el1
        add x1, x1, #0x80
        msr vbar_el1, x1
        isb
    3:  b 3b
    """, Pinner())
    assert isinstance(h, Pinner)
    assert res.exit == "halt" and len(h.trips) == 1, res.reason
    assert res.guard is not None and res.guard.ppi_fixes >= 1


def test_watchdog_halts_a_kernel_that_starves_the_guard() -> None:
    """EL1 disables the guard timer, masks everything and never traps: the machine is halted."""
    from secvma.machine.build import assemble_payload
    from secvma.machine.mailbox import MailboxServer

    from .payload import payload

    gicr_sgi = 0x080A_0000 + 0x1_0000
    src = payload(f"""
        mrs x0, vbar_el1
        hvc #1
        msr daifset, #0xf
        ldr x1, ={gicr_sgi:#x}
        mov w2, #(1 << 26)
        str w2, [x1, #0x180]            // GICR_ICENABLER0: guard timer off
        mrs x1, vbar_el1
        add x1, x1, #0x80
        msr vbar_el1, x1
        isb
    1:  b 1b
    """)

    def short_watch(server: MailboxServer) -> None:
        server.starve_s = 2.0  # the default (20 s) allows for a loaded host

    h = Pinner()
    res = boot(MachineConfig(kernel=assemble_payload(src, name="starve").path, timeout_s=60), h,
               on_started=short_watch)
    assert res.exit == "halt" and res.reason.startswith("guard starved: cpu0"), res.reason
    assert not h.trips
