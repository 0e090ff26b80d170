"""The mailbox hot path and its idle mode (issue 14 items 2-3): every trap still reaches Python.

Spin-then-sleep must not lose a trap that arrives while the loop sleeps, on any CPU; the cached
MSR decoder must not turn a later trap of the same register into anything but a trap.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secvma import fixtures as fx
from secvma.bench.micro import measure_idle
from secvma.machine import mailbox
from secvma.machine.build import assemble_payload
from secvma.machine.mailbox import MailboxServer, decode_sysreg_iss
from secvma.machine.qemu import MachineConfig
from secvma.machine.runner import boot
from secvma.platform import Event, Platform, SysReg, SysregTrap, Vcpu

from .payload import POWEROFF, Recorder, payload

K = 12  # HVCs per CPU, each after a pause longer than the longest idle sleep

SMP_BODY = f"""
    ldr x0, =0xC4000003     // PSCI CPU_ON: cpu1 at `secondary`
    mov x1, #1
    adr x2, secondary
    mov x3, #0
    smc #0
    mov x19, #{K}
1:  bl pause
    mov x0, x19
    hvc #0x51
    subs x19, x19, #1
    b.ne 1b
    adr x5, done_flag
2:  ldr x6, [x5]
    cbz x6, 2b
""" + POWEROFF + f"""
secondary:
    mov x19, #{K}
1:  bl pause
    mov x0, x19
    hvc #0x52
    subs x19, x19, #1
    b.ne 1b
    adr x5, done_flag
    mov x6, #1
    str x6, [x5]
3:  wfi
    b 3b

pause:                      // ~2 ms of the virtual counter: the mailbox loop goes to sleep
    mrs x7, cntvct_el0
    mrs x8, cntfrq_el0
    lsr x8, x8, #9
    add x8, x7, x8
4:  mrs x7, cntvct_el0
    cmp x7, x8
    b.lo 4b
    ret
    .balign 8
done_flag: .quad 0
"""


@pytest.mark.qemu
def test_spin_then_sleep_loses_no_trap_on_either_cpu_smp2() -> None:
    """Two CPUs trap after pauses longer than the spin window and the longest sleep: all served."""
    b = assemble_payload(payload(SMP_BODY), name="test-idle-smp2")
    h = Recorder()
    servers: list[MailboxServer] = []
    res = boot(MachineConfig(kernel=b.path, ncpus=2, timeout_s=60), h, spin_us=50,
               on_started=servers.append)
    assert res.exit == "poweroff", res.console
    for imm in (0x51, 0x52):
        seen = [x[0] for i, x in h.hvc_log if i == imm]
        assert seen == list(range(K, 0, -1)), (imm, seen)
    assert servers[0].idle_sleeps > 0  # the loop did sleep between the traps


class _RefuseBad(Recorder):
    """Carries out MSR CONTEXTIDR_EL1 unless the value is 0xBAD (then only skips it)."""

    def __init__(self) -> None:
        super().__init__(trap_sysregs=True)
        self.msr_values: list[int] = []

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        if isinstance(event, SysregTrap) and event.reg is SysReg.CONTEXTIDR_EL1 and event.is_write:
            self.msr_values.append(event.value)
            if event.value == 0xBAD:
                cpu.skip()
                return
        super().handle(platform, cpu, event)


@pytest.mark.qemu
def test_same_register_traps_every_time_and_a_refused_value_stays_refused() -> None:
    """The decoder caches per encoding; the second and third MSR still trap, 0xBAD is refused."""
    b = assemble_payload(payload("""
        mov x1, #5
        msr contextidr_el1, x1
        mov x2, #0xBAD
        msr contextidr_el1, x2
        mov x3, #7
        msr contextidr_el1, x3
        mov x4, #0xBAD
        msr contextidr_el1, x4
        mrs x1, contextidr_el1
        mov x0, x1
        hvc #0xAA
    """ + POWEROFF), name="test-msr-cache")
    h = _RefuseBad()
    res = boot(MachineConfig(kernel=b.path, timeout_s=20), h)
    assert res.exit == "poweroff"
    assert h.msr_values == [5, 0xBAD, 7, 0xBAD]
    assert h.reports[0][0] == 7


@pytest.mark.qemu
def test_trap_counts_by_kind_after_hvcs_and_other_traps() -> None:
    """Traps are counted by event type on the hot path and reported by name: an HVC is decoded
    from ESR alone, and an MSR trap right after one still decodes with its full syndrome."""
    b = assemble_payload(payload("""
        hvc #1
        mov x1, #9
        msr contextidr_el1, x1
        hvc #2
        mrs x0, contextidr_el1
        hvc #0xAA
    """ + POWEROFF), name="test-trap-counts")
    h = Recorder(trap_sysregs=True)
    res = boot(MachineConfig(kernel=b.path, timeout_s=20), h)
    assert res.exit == "poweroff"
    assert [i for i, _ in h.hvc_log] == [1, 2, 0xAA] and h.reports[0][0] == 9
    assert res.traps == {"CpuStart": 1, "Hvc": 3, "SysregTrap": 1, "Smc": 1}  # TVM: writes only


@given(st.integers(0, (1 << 25) - 1))
def test_cached_sysreg_decode_equals_the_syndrome_fields(iss: int) -> None:
    enc, reg = decode_sysreg_iss(iss)
    assert enc == ((iss >> 20) & 3, (iss >> 14) & 7, (iss >> 10) & 0xF, (iss >> 1) & 0xF, (iss >> 17) & 7)
    assert reg is mailbox.SYSREG_BY_ENCODING.get(enc)
    assert decode_sysreg_iss(iss) == (enc, reg)  # and again, from the cache when it was stored


def test_sysreg_decode_cache_is_bounded() -> None:
    for iss in range(0, mailbox.SYSREG_DECODE_CACHE_MAX * 4 << 10, 1 << 10):
        decode_sysreg_iss(iss)
    assert len(mailbox._sysreg_decode) <= mailbox.SYSREG_DECODE_CACHE_MAX


@pytest.mark.qemu
@pytest.mark.debian
@pytest.mark.slow
def test_idle_guest_is_measured_and_the_guard_ticks_while_the_loop_sleeps(debian: fx.FixtureSet) -> None:
    """/init sleeps 1 s under the NullHypervisor with the guard armed: the mailbox loop sleeps,
    the guard's 10 ms tick keeps coming (handled at EL2), and the figures are measured ones."""
    fig = measure_idle(debian.kernel_image, idle_ms=1000)
    assert fig.seconds > 0 and fig.hypervisor_pct >= 0 and fig.qemu_pct >= 0
    assert fig.idle_sleeps > 0
    assert fig.guard_ticks_per_s > 0
