"""Each trap class of the trampoline, exercised by real AArch64 code at EL1 under QEMU."""

from __future__ import annotations

import pytest

from secvma.machine import layout
from secvma.outside import ESR_DABT_CUR_EXT, ESR_IABT_CUR_EXT

from .payload import POWEROFF, Recorder, run

pytestmark = pytest.mark.qemu


def test_hvc_arguments_reach_python_and_x0_comes_back() -> None:
    """HVC #imm delivers imm and x0..x7 to the hypervisor; its x0 answer is seen by the guest."""
    res, h = run("""
        mov x0, #11
        mov x1, #22
        mov x7, #77
        hvc #0x123
        mov x1, x0          // NullHypervisor answers 0
        mov x0, #5
        hvc #0xAA
    """ + POWEROFF)
    assert res.exit == "poweroff"
    assert (0x123, (11, 22, 0, 0, 0, 0, 0, 77)) in h.hvc_log
    assert h.reports == [(5, 0, 0, 0, 0, 0, 0, 77)]


def test_psci_system_off_powers_the_machine_down() -> None:
    """SMC (PSCI SYSTEM_OFF) is trapped by TSC, passed to the firmware, and QEMU exits 0."""
    res, h = run(POWEROFF)
    assert res.exit == "poweroff" and res.qemu_rc == 0
    assert h.events["Smc"] == 1


def test_msr_trapped_by_tvm_is_emulated() -> None:
    """With TVM an MSR TTBR0_EL1 traps to Python, which performs it; MRS reads the new value."""
    _res, h = run("""
        ldr x5, =0x12345000
        msr ttbr0_el1, x5
        isb
        mrs x1, ttbr0_el1
        mov x0, #1
        hvc #0xAA
    """ + POWEROFF, Recorder(trap_sysregs=True))
    assert h.events["SysregTrap"] == 1
    assert h.reports[0][1] == 0x12345000


def test_stage2_data_abort_on_hypervisor_memory_is_injected_into_el1() -> None:
    """A load from the hypervisor's region faults at stage 2 and arrives at VBAR_EL1 + 0x200."""
    _res, h = run(f"""
        ldr x5, ={layout.MBOX_BASE + 0x60:#x}
        ldr x6, [x5]
        mov x0, #1
        hvc #0xAA
    """ + POWEROFF)
    assert h.events["Stage2Abort"] == 1
    assert h.reports == []
    esr, far, _elr, vec = h.exceptions[0]
    assert (esr, far, vec) == (ESR_DABT_CUR_EXT, layout.MBOX_BASE + 0x60, 0x200)


def test_stage2_instruction_abort_is_injected_as_an_instruction_abort() -> None:
    """Branching into the hypervisor's memory is a stage-2 fetch fault, injected as IABT."""
    _res, h = run(f"""
        ldr x5, ={layout.TRAMPOLINE_BASE:#x}
        br x5
    """)
    esr, far, elr, vec = h.exceptions[0]
    assert (esr, far, elr, vec) == (ESR_IABT_CUR_EXT, layout.TRAMPOLINE_BASE,
                                    layout.TRAMPOLINE_BASE, 0x200)


def test_fast_path_msr_is_done_in_el2_without_python() -> None:
    """A register in the fast-path table is written by the trampoline alone (counted there)."""
    from secvma.machine.mailbox import MailboxServer
    from secvma.platform import SysReg

    def arm(server: MailboxServer) -> None:
        server.cpus[0].set_fast_path([SysReg.CONTEXTIDR_EL1])

    from secvma.machine.build import assemble_payload
    from secvma.machine.qemu import MachineConfig
    from secvma.machine.runner import boot

    from .payload import payload
    src = payload("""
        mov x4, #0
    1:  msr contextidr_el1, x4
        add x4, x4, #1
        cmp x4, #100
        b.ne 1b
        mrs x1, contextidr_el1
        mov x0, #1
        hvc #0xAA
    """ + POWEROFF)
    h = Recorder(trap_sysregs=True)
    res = boot(MachineConfig(kernel=assemble_payload(src).path, timeout_s=20), h, on_started=arm)
    assert res.fast_traps == 100
    assert h.events["SysregTrap"] == 0
    assert h.reports[0][1] == 99


def test_read_sysreg_sees_guest_changes_after_a_hypervisor_write() -> None:
    """VBAR_EL1 is not trapped: after the hypervisor wrote it, a later guest write must still be
    what `read_sysreg` returns at the next trap (the trap-time value wins over the shadow)."""
    from secvma.machine.mailbox import MailboxCpu
    from secvma.platform import Event, Hvc, Platform, SysReg, Vcpu

    seen: list[int] = []

    class Probe(Recorder):
        def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
            if isinstance(event, Hvc) and event.imm == 1:
                cpu.write_sysreg(SysReg.VBAR_EL1, 0x4200_1000)
                seen.append(cpu.read_sysreg(SysReg.VBAR_EL1))  # queued write wins in this trap
            elif isinstance(event, Hvc) and event.imm == 2:
                assert isinstance(cpu, MailboxCpu)
                seen.append(cpu.read_sysreg(SysReg.VBAR_EL1))
            super().handle(platform, cpu, event)

    run("""
        hvc #1
        mrs x5, vbar_el1
        mov x0, #0
        ldr x6, =0x42002000
        msr vbar_el1, x6
        isb
        hvc #2
        mov x0, x5
        hvc #0xAA
    """ + POWEROFF, Probe())
    assert seen == [0x4200_1000, 0x4200_2000]


class _Patcher(Recorder):
    """On HVC #0x77 rewrites the instruction at x1 to `mov x0, #2` through `write_code`."""

    def handle(self, platform, cpu, event):  # type: ignore[no-untyped-def]
        from secvma.platform import Hvc, PhysAddr

        if isinstance(event, Hvc) and event.imm == 0x77:
            platform.write_code(cpu, PhysAddr(event.x[1]), (0xD2800040).to_bytes(4, "little"))
        super().handle(platform, cpu, event)


def test_write_code_is_seen_by_already_translated_code() -> None:
    """Text the hypervisor rewrites (a validated kernel patch) runs as rewritten, although
    QEMU had translated the old instruction: the store is done by the CPU at EL2 (a plain
    `Platform.write` into RAM leaves the stale translation running: (1, 1), tried)."""
    _res, h = run("""
        adr x5, patchme
        blr x5              // translated: returns 1
        mov x6, x0
        mov x1, x5
        hvc #0x77           // the hypervisor patches patchme
        adr x5, patchme
        blr x5              // must return 2
        mov x1, x6
        mov x2, x0
        mov x0, #1
        hvc #0xAA
    """ + POWEROFF + """
    patchme:
        mov x0, #1
        ret
    """, _Patcher())
    assert h.reports and h.reports[0][1:3] == (1, 2)
