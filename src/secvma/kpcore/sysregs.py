"""Trapped writes to EL1 translation registers (HCR_EL2.TVM), spec §5.

C: sekvm/HostSysRegsHandler.c:handle_host_sys_regs, handle_ttbr0, handle_ttbr1.

    register                  accepted value                              otherwise
    TTBR1_EL1                 base (ASID cleared) == swapper, bit 48 clear  refuse (C: panic)
    TTBR0_EL1                 only in the CPU's boot window (hardened:      refuse (C: panic)
                              a DATA page, the kernel's idmap); else HVC 35
    SCTLR/TCR/MAIR/AMAIR/     == the value pinned at install (boot info     refuse (C: panic)
    CONTEXTIDR                for SCTLR/TCR/MAIR, 0 for AMAIR/CONTEXTIDR)
    ESR/FAR/AFSR0/AFSR1       hardened: emulated (no translation role)      C: panic
    reads, anything else      -                                             refuse (C: panic)

Boot window (an adaptation: the testbed calls HVC 6 with the MMU off, the C kernel after it
is on): from a CPU's first HVC 6 until its SCTLR write that sets M, the one-time MAIR/TCR/
TTBR0/TTBR1/SCTLR sequence of head.S is accepted; after it TTBR0 moves only through HVC 35.

VBAR_EL1 is not trapped by TVM (nor by anything an ARMv8.0 EL2 can set). `hardened` pins it
at the first trap after install where it points into kernel text, checks it at every later
trap and restores the pinned value (logging a refusal) when it changed, and always before an
injected abort. A forged VBAR can only point at EL1-executable memory, i.e. kernel text
(stage-1 PXN everywhere else, stage-2 read-only text), so it gives no new code, and it lasts
only until the CPU's next trap.
"""

from __future__ import annotations

from secvma.kpcore.pages import Owner, Usage
from secvma.kpcore.refusal import Errno, HypPanic, HypRefusal, Outcome
from secvma.kpcore.state import PINNED, KState
from secvma.platform import Platform, SysReg, SysregTrap, Vcpu

TTBR_BADDR = 0x0000_FFFF_FFFF_FFFE
USER_ASID_FLAG = 1 << 48
SCTLR_M = 1
HARMLESS = (SysReg.ESR_EL1, SysReg.FAR_EL1, SysReg.AFSR0_EL1, SysReg.AFSR1_EL1)


def _deny(st: KState, rule: str, reason: str, code: Errno = Errno.EPERM, **v: int) -> HypRefusal:
    cls = HypRefusal if st.policy.hardened else HypPanic
    return cls(code, rule, reason, **v)


def check_ttbr1(st: KState, value: int) -> None:
    """TTBR1 may only hold swapper_pg_dir (USER_ASID_FLAG clear). C: handle_ttbr1."""
    boot = st.boot
    assert boot is not None
    base = value & TTBR_BADDR
    if st.pages.owner_of(base >> 12) is not Owner.HOST:
        raise _deny(st, "ttbr1", "TTBR1 base is not host memory", value=value)
    if base != boot.swapper_pg_dir or value & USER_ASID_FLAG:
        raise _deny(st, "ttbr1", "TTBR1 may only point at swapper_pg_dir", value=value,
                    swapper=boot.swapper_pg_dir)


def handle_sysreg(st: KState, plat: Platform, cpu: Vcpu, ev: SysregTrap) -> Outcome:
    """Emulate or refuse one trapped MSR (see the module table)."""
    c = st.cpu(cpu.index)
    reg = ev.reg
    if not ev.is_write or reg is None:
        raise _deny(st, "sysreg", f"unexpected trapped access {ev.encoding}", Errno.EINVAL)
    value = ev.value
    if reg is SysReg.TTBR1_EL1:
        check_ttbr1(st, value)
        c.ttbr1 = value
    elif reg is SysReg.TTBR0_EL1:
        if not c.boot_window:
            raise _deny(st, "ttbr0", "TTBR0 is loaded only through HVC 35", value=value)
        base = value & TTBR_BADDR
        if st.policy.hardened and st.pages.usage_of(base >> 12) is not Usage.EL1_DATA:
            raise _deny(st, "ttbr0", "boot TTBR0 must be the kernel's idmap (a DATA page)",
                        value=value)
        c.ttbr0 = value
    elif reg in PINNED:
        pinned = st.pinned.get(reg, 0)
        if value != pinned:
            raise _deny(st, "pinned-sysreg", f"{reg.name} is pinned at its install value",
                        value=value, pinned=pinned)
        if reg is SysReg.SCTLR_EL1 and value & SCTLR_M:
            c.boot_window = False
    elif reg in HARMLESS:
        if st.policy.quirks.tvm_other_panics:
            raise HypPanic(Errno.EPERM, "sysreg", f"trapped write to {reg.name}", value=value)
    else:
        raise _deny(st, "sysreg", f"{reg.name} writes are not emulated", value=value)
    cpu.write_sysreg(reg, value)
    cpu.skip()
    return Outcome.EMULATED
