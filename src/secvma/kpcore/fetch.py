"""Finding the trapping instruction and the stage-1 leaf of a kernel VA.

C: kint/HostKptCoreAux.c:fetch_instruction (PA = ELR - kimage_voffset, spec §11 gap 10).
`hardened` walks the live stage-1 tables of the trapping CPU (arch.walk.translate, stage 2
treated as the identity it is) and only accepts an instruction that lies in EL1-executable
memory (KCODE or MOD_txt): any other page cannot have been executed at EL1.
"""

from __future__ import annotations

from collections.abc import Callable

from secvma.arch.walk import AccessType, Fault, translate
from secvma.kpcore.pages import EL1_EXEC_CLASSES, Owner
from secvma.kpcore.state import KState
from secvma.platform import GuestMemoryError, PhysAddr, Platform, SysReg, Vcpu


class _Unreadable(Exception):
    pass


def _reader(plat: Platform) -> Callable[[PhysAddr], int]:
    def read_u64(pa: PhysAddr) -> int:
        try:
            return plat.read_u64(pa)
        except (GuestMemoryError, ValueError):
            raise _Unreadable(pa) from None

    return read_u64


def s1_translate(plat: Platform, cpu: Vcpu, va: int, access: AccessType) -> tuple[int, int] | None:
    """(PA, stage-1 leaf level) of `va` for an EL1 `access` on `cpu`, None on a fault."""
    try:
        res = translate(_reader(plat), va, access, 1,
                        sctlr=cpu.read_sysreg(SysReg.SCTLR_EL1),
                        tcr=cpu.read_sysreg(SysReg.TCR_EL1),
                        ttbr0=cpu.read_sysreg(SysReg.TTBR0_EL1),
                        ttbr1=cpu.read_sysreg(SysReg.TTBR1_EL1))
    except (_Unreadable, ValueError):
        return None
    if isinstance(res, Fault):
        return None
    return res.pa, (res.s1.level if res.s1 is not None else 3)


def fetch_insn(st: KState, plat: Platform, cpu: Vcpu) -> int | None:
    """The 32-bit instruction at ELR, or None if it cannot be fetched (see module doc)."""
    pc = cpu.elr
    if pc % 4:
        return None
    if st.policy.quirks.insn_via_kimage_voffset:
        boot = st.boot
        if boot is None:
            return None
        pa = (pc - boot.kimage_voffset) & ((1 << 64) - 1)
    else:
        hit = s1_translate(plat, cpu, pc, AccessType.FETCH)
        if hit is None:
            return None
        pa = hit[0]
        pfn = pa >> 12
        if st.pages.owner_of(pfn) is not Owner.HOST \
                or st.pages.usage_of(pfn) not in EL1_EXEC_CLASSES:
            return None
    if not st.pages.in_ram(pa):
        return None
    try:
        return int.from_bytes(plat.read(PhysAddr(pa), 4), "little")
    except (GuestMemoryError, ValueError):
        return None
