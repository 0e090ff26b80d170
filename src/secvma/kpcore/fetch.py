"""Finding the trapping instruction and the stage-1 leaf of a kernel VA.

C: kint/HostKptCoreAux.c:fetch_instruction (PA = ELR - kimage_voffset, spec §11 gap 10).
`hardened` walks the live stage-1 tables of the trapping CPU (arch.walk.translate, stage 2
treated as the identity it is) and only accepts an instruction that lies in EL1-executable
memory (KCODE or MOD_txt): any other page cannot have been executed at EL1.
"""

from __future__ import annotations

from collections.abc import Callable

from secvma.arch.descriptors import AF, OA_MASK
from secvma.arch.walk import AccessType, Fault, s1_output_bits, translate
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


class S1Pages:
    """`s1_translate(..., AccessType.LOAD)` of many kernel pages during one trap, fast.

    The first page of each 2 MB region is translated by the full walk; when its leaf is a
    level-3 page, the other pages of the region are read from the same level-3 table (the path
    above it is the one just walked): a page descriptor (bits[1:0] = 0b11) with AF set and its
    output address inside the regime's output size translates, anything else is the fault the
    full walk reports there. For an EL1 load that is all the full walk checks at level 3
    (stage 1 always grants EL1 read; no stage 2 here). One HVC 30 translates ~1 200 pages.
    """

    def __init__(self, plat: Platform, cpu: Vcpu) -> None:
        self.plat, self.cpu = plat, cpu
        self.sctlr = cpu.read_sysreg(SysReg.SCTLR_EL1)
        self.tcr = cpu.read_sysreg(SysReg.TCR_EL1)
        self.ttbr0 = cpu.read_sysreg(SysReg.TTBR0_EL1)
        self.ttbr1 = cpu.read_sysreg(SysReg.TTBR1_EL1)
        self._l3: dict[int, tuple[int, int]] = {}  # va >> 21 -> (level-3 table PA, output bits)

    def translate(self, va: int) -> tuple[int, int] | None:
        """(PA, stage-1 leaf level) of `va` for an EL1 load, None on a fault."""
        va &= (1 << 64) - 1
        hit = self._l3.get(va >> 21)
        if hit is not None:
            table, bits = hit
            try:
                raw = self.plat.read_u64(PhysAddr(table + 8 * ((va >> 12) & 511)))
            except (GuestMemoryError, ValueError):
                return None
            if raw & 3 != 3 or not raw & AF or (raw & OA_MASK) >> bits:
                return None
            return (raw & OA_MASK) | (va & 0xFFF), 3
        try:
            res = translate(_reader(self.plat), va, AccessType.LOAD, 1, sctlr=self.sctlr,
                            tcr=self.tcr, ttbr0=self.ttbr0, ttbr1=self.ttbr1)
        except (_Unreadable, ValueError):
            return None
        if isinstance(res, Fault):
            return None
        if res.s1 is None:
            return res.pa, 3
        if res.s1.level == 3:
            out_bits = s1_output_bits(va, self.tcr, self.ttbr0, self.ttbr1)
            if out_bits is not None:
                self._l3[va >> 21] = (int(res.s1.slot) & ~0xFFF, out_bits)
        return res.pa, res.s1.level


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
