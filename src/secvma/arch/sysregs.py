"""AArch64 system-register encodings by name: (op0, op1, CRn, CRm, op2).

Arm ARM (DDI 0487) C5.3 "A64 system register encodings" and the per-register pages in D19/D23
("Accessing <reg>": MRS <Xt>, <reg> ; op0 op1 CRn CRm op2). The table is checked against
binutils (`mrs x0, <name>` assembled and decoded) by tests/arch/test_sysregs.py.

The MSR/MRS instruction word (C6.2 MRS/MSR register): 1101 0101 00 L 1 o0 op1 CRn CRm op2 Rt,
with L=1 for MRS, op0 = 2 + o0. Registers with no name here render as S<op0>_<op1>_C<n>_C<m>_<op2>,
the generic form the assembler accepts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True, order=True)
class SysRegEncoding:
    """One system-register encoding; `str()` is the generic assembler name."""

    op0: int
    op1: int
    crn: int
    crm: int
    op2: int

    def __post_init__(self) -> None:
        limits = (("op0", self.op0, 3), ("op1", self.op1, 7), ("crn", self.crn, 15),
                  ("crm", self.crm, 15), ("op2", self.op2, 7))
        for name, value, top in limits:
            if not 0 <= value <= top:
                raise ValueError(f"{name}={value} outside 0..{top}")

    @property
    def key(self) -> tuple[int, int, int, int, int]:
        return (self.op0, self.op1, self.crn, self.crm, self.op2)

    def __str__(self) -> str:
        return f"S{self.op0}_{self.op1}_C{self.crn}_C{self.crm}_{self.op2}"


def _e(op0: int, op1: int, crn: int, crm: int, op2: int) -> SysRegEncoding:
    return SysRegEncoding(op0, op1, crn, crm, op2)


_BASE: dict[str, SysRegEncoding] = {
    # identification (D23.2)
    "MIDR_EL1": _e(3, 0, 0, 0, 0), "MPIDR_EL1": _e(3, 0, 0, 0, 5),
    "REVIDR_EL1": _e(3, 0, 0, 0, 6),
    "ID_AA64PFR0_EL1": _e(3, 0, 0, 4, 0), "ID_AA64PFR1_EL1": _e(3, 0, 0, 4, 1),
    "ID_AA64DFR0_EL1": _e(3, 0, 0, 5, 0), "ID_AA64DFR1_EL1": _e(3, 0, 0, 5, 1),
    "ID_AA64AFR0_EL1": _e(3, 0, 0, 5, 4), "ID_AA64AFR1_EL1": _e(3, 0, 0, 5, 5),
    "ID_AA64ISAR0_EL1": _e(3, 0, 0, 6, 0), "ID_AA64ISAR1_EL1": _e(3, 0, 0, 6, 1),
    "ID_AA64MMFR0_EL1": _e(3, 0, 0, 7, 0), "ID_AA64MMFR1_EL1": _e(3, 0, 0, 7, 1),
    "ID_AA64MMFR2_EL1": _e(3, 0, 0, 7, 2),
    "CCSIDR_EL1": _e(3, 1, 0, 0, 0), "CLIDR_EL1": _e(3, 1, 0, 0, 1),
    "AIDR_EL1": _e(3, 1, 0, 0, 7), "CSSELR_EL1": _e(3, 2, 0, 0, 0),
    "CTR_EL0": _e(3, 3, 0, 0, 1), "DCZID_EL0": _e(3, 3, 0, 0, 7),
    # EL1 virtual memory control (D19.2)
    "SCTLR_EL1": _e(3, 0, 1, 0, 0), "ACTLR_EL1": _e(3, 0, 1, 0, 1),
    "CPACR_EL1": _e(3, 0, 1, 0, 2),
    "TTBR0_EL1": _e(3, 0, 2, 0, 0), "TTBR1_EL1": _e(3, 0, 2, 0, 1),
    "TCR_EL1": _e(3, 0, 2, 0, 2),
    "SPSR_EL1": _e(3, 0, 4, 0, 0), "ELR_EL1": _e(3, 0, 4, 0, 1), "SP_EL0": _e(3, 0, 4, 1, 0),
    "SPSEL": _e(3, 0, 4, 2, 0), "CURRENTEL": _e(3, 0, 4, 2, 2), "PAN": _e(3, 0, 4, 2, 3),
    "UAO": _e(3, 0, 4, 2, 4), "ICC_PMR_EL1": _e(3, 0, 4, 6, 0),
    "AFSR0_EL1": _e(3, 0, 5, 1, 0), "AFSR1_EL1": _e(3, 0, 5, 1, 1),
    "ESR_EL1": _e(3, 0, 5, 2, 0), "FAR_EL1": _e(3, 0, 6, 0, 0), "PAR_EL1": _e(3, 0, 7, 4, 0),
    "PMINTENSET_EL1": _e(3, 0, 9, 14, 1), "PMINTENCLR_EL1": _e(3, 0, 9, 14, 2),
    "MAIR_EL1": _e(3, 0, 10, 2, 0), "AMAIR_EL1": _e(3, 0, 10, 3, 0),
    "VBAR_EL1": _e(3, 0, 12, 0, 0), "ISR_EL1": _e(3, 0, 12, 1, 0),
    "ICC_DIR_EL1": _e(3, 0, 12, 11, 1), "ICC_RPR_EL1": _e(3, 0, 12, 11, 3),
    "ICC_SGI1R_EL1": _e(3, 0, 12, 11, 5),
    "ICC_IAR1_EL1": _e(3, 0, 12, 12, 0), "ICC_EOIR1_EL1": _e(3, 0, 12, 12, 1),
    "ICC_HPPIR1_EL1": _e(3, 0, 12, 12, 2), "ICC_BPR1_EL1": _e(3, 0, 12, 12, 3),
    "ICC_CTLR_EL1": _e(3, 0, 12, 12, 4), "ICC_SRE_EL1": _e(3, 0, 12, 12, 5),
    "ICC_IGRPEN0_EL1": _e(3, 0, 12, 12, 6), "ICC_IGRPEN1_EL1": _e(3, 0, 12, 12, 7),
    "CONTEXTIDR_EL1": _e(3, 0, 13, 0, 1), "TPIDR_EL1": _e(3, 0, 13, 0, 4),
    "CNTKCTL_EL1": _e(3, 0, 14, 1, 0),
    # EL0-accessible (op1 = 3)
    "NZCV": _e(3, 3, 4, 2, 0), "DAIF": _e(3, 3, 4, 2, 1),
    "FPCR": _e(3, 3, 4, 4, 0), "FPSR": _e(3, 3, 4, 4, 1),
    "DSPSR_EL0": _e(3, 3, 4, 5, 0), "DLR_EL0": _e(3, 3, 4, 5, 1),
    "PMCR_EL0": _e(3, 3, 9, 12, 0), "PMCNTENSET_EL0": _e(3, 3, 9, 12, 1),
    "PMCNTENCLR_EL0": _e(3, 3, 9, 12, 2), "PMOVSCLR_EL0": _e(3, 3, 9, 12, 3),
    "PMSWINC_EL0": _e(3, 3, 9, 12, 4), "PMSELR_EL0": _e(3, 3, 9, 12, 5),
    "PMCEID0_EL0": _e(3, 3, 9, 12, 6), "PMCEID1_EL0": _e(3, 3, 9, 12, 7),
    "PMCCNTR_EL0": _e(3, 3, 9, 13, 0), "PMXEVTYPER_EL0": _e(3, 3, 9, 13, 1),
    "PMXEVCNTR_EL0": _e(3, 3, 9, 13, 2), "PMUSERENR_EL0": _e(3, 3, 9, 14, 0),
    "PMOVSSET_EL0": _e(3, 3, 9, 14, 3), "PMCCFILTR_EL0": _e(3, 3, 14, 15, 7),
    "TPIDR_EL0": _e(3, 3, 13, 0, 2), "TPIDRRO_EL0": _e(3, 3, 13, 0, 3),
    # generic timer (D11, D23.8)
    "CNTFRQ_EL0": _e(3, 3, 14, 0, 0), "CNTPCT_EL0": _e(3, 3, 14, 0, 1),
    "CNTVCT_EL0": _e(3, 3, 14, 0, 2),
    "CNTP_TVAL_EL0": _e(3, 3, 14, 2, 0), "CNTP_CTL_EL0": _e(3, 3, 14, 2, 1),
    "CNTP_CVAL_EL0": _e(3, 3, 14, 2, 2),
    "CNTV_TVAL_EL0": _e(3, 3, 14, 3, 0), "CNTV_CTL_EL0": _e(3, 3, 14, 3, 1),
    "CNTV_CVAL_EL0": _e(3, 3, 14, 3, 2),
    "CNTVOFF_EL2": _e(3, 4, 14, 0, 3), "CNTHCTL_EL2": _e(3, 4, 14, 1, 0),
    "CNTHP_TVAL_EL2": _e(3, 4, 14, 2, 0), "CNTHP_CTL_EL2": _e(3, 4, 14, 2, 1),
    "CNTHP_CVAL_EL2": _e(3, 4, 14, 2, 2),
    # debug (op0 = 2, D23.3)
    "OSDTRRX_EL1": _e(2, 0, 0, 0, 2), "MDCCINT_EL1": _e(2, 0, 0, 2, 0),
    "MDSCR_EL1": _e(2, 0, 0, 2, 2), "OSDTRTX_EL1": _e(2, 0, 0, 3, 2),
    "OSECCR_EL1": _e(2, 0, 0, 6, 2),
    "MDRAR_EL1": _e(2, 0, 1, 0, 0), "OSLAR_EL1": _e(2, 0, 1, 0, 4),
    "OSLSR_EL1": _e(2, 0, 1, 1, 4), "OSDLR_EL1": _e(2, 0, 1, 3, 4),
    "DBGPRCR_EL1": _e(2, 0, 1, 4, 4),
    "DBGCLAIMSET_EL1": _e(2, 0, 7, 8, 6), "DBGCLAIMCLR_EL1": _e(2, 0, 7, 9, 6),
    "DBGAUTHSTATUS_EL1": _e(2, 0, 7, 14, 6),
    "MDCCSR_EL0": _e(2, 3, 0, 1, 0), "DBGDTR_EL0": _e(2, 3, 0, 4, 0),
    "DBGDTRRX_EL0": _e(2, 3, 0, 5, 0), "DBGVCR32_EL2": _e(2, 4, 0, 7, 0),
    # EL2 (D19.2, D23.2)
    "VPIDR_EL2": _e(3, 4, 0, 0, 0), "VMPIDR_EL2": _e(3, 4, 0, 0, 5),
    "SCTLR_EL2": _e(3, 4, 1, 0, 0), "ACTLR_EL2": _e(3, 4, 1, 0, 1),
    "HCR_EL2": _e(3, 4, 1, 1, 0), "MDCR_EL2": _e(3, 4, 1, 1, 1),
    "CPTR_EL2": _e(3, 4, 1, 1, 2), "HSTR_EL2": _e(3, 4, 1, 1, 3),
    "HACR_EL2": _e(3, 4, 1, 1, 7),
    "TTBR0_EL2": _e(3, 4, 2, 0, 0), "TTBR1_EL2": _e(3, 4, 2, 0, 1),
    "TCR_EL2": _e(3, 4, 2, 0, 2), "VTTBR_EL2": _e(3, 4, 2, 1, 0),
    "VTCR_EL2": _e(3, 4, 2, 1, 2), "DACR32_EL2": _e(3, 4, 3, 0, 0),
    "SPSR_EL2": _e(3, 4, 4, 0, 0), "ELR_EL2": _e(3, 4, 4, 0, 1), "SP_EL1": _e(3, 4, 4, 1, 0),
    "SPSR_IRQ": _e(3, 4, 4, 3, 0), "SPSR_ABT": _e(3, 4, 4, 3, 1),
    "SPSR_UND": _e(3, 4, 4, 3, 2), "SPSR_FIQ": _e(3, 4, 4, 3, 3),
    "IFSR32_EL2": _e(3, 4, 5, 0, 1),
    "AFSR0_EL2": _e(3, 4, 5, 1, 0), "AFSR1_EL2": _e(3, 4, 5, 1, 1),
    "ESR_EL2": _e(3, 4, 5, 2, 0), "FPEXC32_EL2": _e(3, 4, 5, 3, 0),
    "FAR_EL2": _e(3, 4, 6, 0, 0), "HPFAR_EL2": _e(3, 4, 6, 0, 4),
    "MAIR_EL2": _e(3, 4, 10, 2, 0), "AMAIR_EL2": _e(3, 4, 10, 3, 0),
    "VBAR_EL2": _e(3, 4, 12, 0, 0), "RVBAR_EL2": _e(3, 4, 12, 0, 1),
    "RMR_EL2": _e(3, 4, 12, 0, 2),
    "ICC_SRE_EL2": _e(3, 4, 12, 9, 5),
    "ICH_HCR_EL2": _e(3, 4, 12, 11, 0), "ICH_VTR_EL2": _e(3, 4, 12, 11, 1),
    "ICH_MISR_EL2": _e(3, 4, 12, 11, 2), "ICH_EISR_EL2": _e(3, 4, 12, 11, 3),
    "ICH_ELRSR_EL2": _e(3, 4, 12, 11, 5), "ICH_VMCR_EL2": _e(3, 4, 12, 11, 7),
    "CONTEXTIDR_EL2": _e(3, 4, 13, 0, 1), "TPIDR_EL2": _e(3, 4, 13, 0, 2),
    # VHE EL12/EL02 aliases (FEAT_VHE, D19.1.2)
    "SCTLR_EL12": _e(3, 5, 1, 0, 0), "CPACR_EL12": _e(3, 5, 1, 0, 2),
    "TTBR0_EL12": _e(3, 5, 2, 0, 0), "TTBR1_EL12": _e(3, 5, 2, 0, 1),
    "TCR_EL12": _e(3, 5, 2, 0, 2),
    "SPSR_EL12": _e(3, 5, 4, 0, 0), "ELR_EL12": _e(3, 5, 4, 0, 1),
    "AFSR0_EL12": _e(3, 5, 5, 1, 0), "AFSR1_EL12": _e(3, 5, 5, 1, 1),
    "ESR_EL12": _e(3, 5, 5, 2, 0), "FAR_EL12": _e(3, 5, 6, 0, 0),
    "MAIR_EL12": _e(3, 5, 10, 2, 0), "AMAIR_EL12": _e(3, 5, 10, 3, 0),
    "VBAR_EL12": _e(3, 5, 12, 0, 0), "CONTEXTIDR_EL12": _e(3, 5, 13, 0, 1),
    "CNTKCTL_EL12": _e(3, 5, 14, 1, 0),
    # EL3
    "SCTLR_EL3": _e(3, 6, 1, 0, 0), "ACTLR_EL3": _e(3, 6, 1, 0, 1),
    "SCR_EL3": _e(3, 6, 1, 1, 0), "SDER32_EL3": _e(3, 6, 1, 1, 1),
    "CPTR_EL3": _e(3, 6, 1, 1, 2), "MDCR_EL3": _e(3, 6, 1, 3, 1),
    "TTBR0_EL3": _e(3, 6, 2, 0, 0), "TCR_EL3": _e(3, 6, 2, 0, 2),
    "SPSR_EL3": _e(3, 6, 4, 0, 0), "ELR_EL3": _e(3, 6, 4, 0, 1), "SP_EL2": _e(3, 6, 4, 1, 0),
    "AFSR0_EL3": _e(3, 6, 5, 1, 0), "AFSR1_EL3": _e(3, 6, 5, 1, 1),
    "ESR_EL3": _e(3, 6, 5, 2, 0), "FAR_EL3": _e(3, 6, 6, 0, 0),
    "MAIR_EL3": _e(3, 6, 10, 2, 0), "AMAIR_EL3": _e(3, 6, 10, 3, 0),
    "VBAR_EL3": _e(3, 6, 12, 0, 0), "RVBAR_EL3": _e(3, 6, 12, 0, 1),
    "TPIDR_EL3": _e(3, 6, 13, 0, 2),
}


def _numbered() -> dict[str, SysRegEncoding]:
    regs: dict[str, SysRegEncoding] = {}
    for n in range(16):
        regs[f"DBGBVR{n}_EL1"] = _e(2, 0, 0, n, 4)
        regs[f"DBGBCR{n}_EL1"] = _e(2, 0, 0, n, 5)
        regs[f"DBGWVR{n}_EL1"] = _e(2, 0, 0, n, 6)
        regs[f"DBGWCR{n}_EL1"] = _e(2, 0, 0, n, 7)
        regs[f"ICH_LR{n}_EL2"] = _e(3, 4, 12, 12 + n // 8, n % 8)
    for n in range(4):
        regs[f"ICH_AP0R{n}_EL2"] = _e(3, 4, 12, 8, n)
        regs[f"ICH_AP1R{n}_EL2"] = _e(3, 4, 12, 9, n)
    for n in range(31):
        regs[f"PMEVCNTR{n}_EL0"] = _e(3, 3, 14, 8 + n // 8, n % 8)
        regs[f"PMEVTYPER{n}_EL0"] = _e(3, 3, 14, 12 + n // 8, n % 8)
    return regs


SYSREGS: Mapping[str, SysRegEncoding] = MappingProxyType(_BASE | _numbered())
"""Upper-case register name -> encoding."""

_BY_ENCODING: Mapping[SysRegEncoding, str] = MappingProxyType(
    {enc: name for name, enc in SYSREGS.items()}
)
assert len(_BY_ENCODING) == len(SYSREGS), "two names share one encoding in the table"

_GENERIC = re.compile(r"S([0-3])_([0-7])_C(\d{1,2})_C(\d{1,2})_([0-7])", re.IGNORECASE)


class UnknownSysReg(KeyError):
    """A register name that is neither in the table nor a generic S<op0>_<op1>_C<n>_C<m>_<op2>."""


def encoding_of(name: str) -> SysRegEncoding:
    """Encoding of register `name` (case-insensitive; generic S3_0_C1_C0_0 form accepted)."""
    upper = name.upper()
    if upper in SYSREGS:
        return SYSREGS[upper]
    m = _GENERIC.fullmatch(name)
    if m is None:
        raise UnknownSysReg(name)
    try:
        return SysRegEncoding(*(int(g) for g in m.groups()))
    except ValueError as exc:
        raise UnknownSysReg(name) from exc


def name_of(enc: SysRegEncoding | tuple[int, int, int, int, int]) -> str:
    """Architectural name of `enc`, or its generic S<op0>_<op1>_C<n>_C<m>_<op2> spelling."""
    key = enc if isinstance(enc, SysRegEncoding) else SysRegEncoding(*enc)
    return _BY_ENCODING.get(key, str(key))


def is_named(enc: SysRegEncoding) -> bool:
    """Whether the table has a name for `enc`."""
    return enc in _BY_ENCODING


_MSR_MRS_BASE = 0xD5100000  # 1101 0101 0001 ...: MSR (register); MRS sets bit 21 (L)
_MSR_MRS_MASK = 0xFFD00000


def encode_mrs(enc: SysRegEncoding, rt: int) -> int:
    """Instruction word of `MRS Xrt, <enc>` (C6.2 MRS)."""
    return _encode_sys_move(enc, rt) | (1 << 21)


def encode_msr(enc: SysRegEncoding, rt: int) -> int:
    """Instruction word of `MSR <enc>, Xrt` (C6.2 MSR (register))."""
    return _encode_sys_move(enc, rt)


def _encode_sys_move(enc: SysRegEncoding, rt: int) -> int:
    if enc.op0 < 2:
        raise ValueError(f"op0={enc.op0}: not a register move (op0 must be 2 or 3)")
    if not 0 <= rt <= 31:
        raise ValueError(f"rt={rt} outside 0..31")
    return (
        _MSR_MRS_BASE
        | ((enc.op0 - 2) << 19)
        | (enc.op1 << 16)
        | (enc.crn << 12)
        | (enc.crm << 8)
        | (enc.op2 << 5)
        | rt
    )


@dataclass(frozen=True, slots=True)
class SysRegMove:
    """A decoded MSR/MRS (register) instruction."""

    enc: SysRegEncoding
    rt: int
    is_read: bool  # MRS

    @property
    def name(self) -> str:
        return name_of(self.enc)


def decode_msr_mrs(insn: int) -> SysRegMove | None:
    """Decode an MSR/MRS (register) word; None when `insn` is something else."""
    if insn & _MSR_MRS_MASK != _MSR_MRS_BASE:
        return None
    enc = SysRegEncoding(
        2 + ((insn >> 19) & 1),
        (insn >> 16) & 7,
        (insn >> 12) & 15,
        (insn >> 8) & 15,
        (insn >> 5) & 7,
    )
    return SysRegMove(enc, insn & 31, bool(insn & (1 << 21)))
