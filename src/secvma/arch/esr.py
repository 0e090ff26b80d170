"""Exception Syndrome Register (ESR_ELx) decode and encode.

Arm ARM (DDI 0487) D23.2.41 ESR_EL1 / D23.2.42 ESR_EL2: EC bits 31:26, IL bit 25, ISS 24:0.
ISS layouts: data abort (EC 0x24/0x25) "ISS encoding for an exception from a Data Abort",
instruction abort (0x20/0x21), MSR/MRS/system instruction trap (0x18), HVC/SMC/SVC (0x15-0x17:
imm16), WFI/WFE (0x01). DFSC/IFSC values: "ISS encoding for an exception from a Data Abort",
table of DFSC codes (4KB granule without FEAT_LPA2: levels 0-3).

    >>> decode_esr(0x93810005)   # data abort, lower EL, ISV, 32-bit LDR/STR into w1,
    ...                          # level-1 translation fault (docs/qemu-platform.md's SMP bug)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from secvma.arch.sysregs import SysRegEncoding, name_of

EC_SHIFT = 26
IL = 1 << 25
ISS_MASK = (1 << 25) - 1


class EC(enum.IntEnum):
    """Exception classes (ESR_ELx.EC) that AArch64 can report."""

    UNKNOWN = 0x00
    WFX = 0x01
    CP15_32 = 0x03
    CP15_64 = 0x04
    CP14_32 = 0x05
    CP14_LS = 0x06
    FP_ASIMD = 0x07
    CP10_ID = 0x08
    PAC = 0x09
    LS64 = 0x0A
    CP14_64 = 0x0C
    BTI = 0x0D
    ILLEGAL_STATE = 0x0E
    SVC32 = 0x11
    HVC32 = 0x12
    SMC32 = 0x13
    SVC64 = 0x15
    HVC64 = 0x16
    SMC64 = 0x17
    SYS64 = 0x18
    SVE = 0x19
    ERET = 0x1A
    FPAC = 0x1C
    SME = 0x1D
    IMP_DEF = 0x1F
    IABT_LOW = 0x20
    IABT_CUR = 0x21
    PC_ALIGN = 0x22
    DABT_LOW = 0x24
    DABT_CUR = 0x25
    SP_ALIGN = 0x26
    MOPS = 0x27
    FP_EXC32 = 0x28
    FP_EXC64 = 0x2C
    SERROR = 0x2F
    BREAKPT_LOW = 0x30
    BREAKPT_CUR = 0x31
    SOFTSTP_LOW = 0x32
    SOFTSTP_CUR = 0x33
    WATCHPT_LOW = 0x34
    WATCHPT_CUR = 0x35
    BKPT32 = 0x38
    VECTOR32 = 0x3A
    BRK64 = 0x3C


class FaultKind(enum.Enum):
    """What a DFSC/IFSC reports (translation-related kinds carry a level)."""

    ADDRESS_SIZE = "address-size"
    TRANSLATION = "translation"
    ACCESS_FLAG = "access-flag"
    PERMISSION = "permission"
    SYNC_EXTERNAL = "sync-external"
    SYNC_EXTERNAL_WALK = "sync-external-walk"
    TAG_CHECK = "tag-check"
    SYNC_PARITY = "sync-parity"
    SYNC_PARITY_WALK = "sync-parity-walk"
    ALIGNMENT = "alignment"
    TLB_CONFLICT = "tlb-conflict"
    UNSUPPORTED_ATOMIC_UPDATE = "unsupported-atomic-hw-update"
    IMPDEF_LOCKDOWN = "impdef-lockdown"
    UNSUPPORTED_EXCLUSIVE = "unsupported-exclusive-or-atomic"
    SECTION_DOMAIN = "section-domain"
    PAGE_DOMAIN = "page-domain"
    UNKNOWN = "unknown"


_LEVELLED_BASE = {
    FaultKind.ADDRESS_SIZE: 0b000000,
    FaultKind.TRANSLATION: 0b000100,
    FaultKind.ACCESS_FLAG: 0b001000,
    FaultKind.PERMISSION: 0b001100,
    FaultKind.SYNC_EXTERNAL_WALK: 0b010100,
    FaultKind.SYNC_PARITY_WALK: 0b011100,
}
_FIXED = {
    0b010000: FaultKind.SYNC_EXTERNAL,
    0b010001: FaultKind.TAG_CHECK,
    0b011000: FaultKind.SYNC_PARITY,
    0b100001: FaultKind.ALIGNMENT,
    0b110000: FaultKind.TLB_CONFLICT,
    0b110001: FaultKind.UNSUPPORTED_ATOMIC_UPDATE,
    0b110100: FaultKind.IMPDEF_LOCKDOWN,
    0b110101: FaultKind.UNSUPPORTED_EXCLUSIVE,
    0b111101: FaultKind.SECTION_DOMAIN,
    0b111110: FaultKind.PAGE_DOMAIN,
}
_LEVELLED_KIND = {base: kind for kind, base in _LEVELLED_BASE.items()}
_FIXED_CODE = {kind: code for code, kind in _FIXED.items()}


@dataclass(frozen=True, slots=True)
class FaultStatus:
    """A decoded DFSC/IFSC: kind, and the lookup level for translation-related kinds."""

    kind: FaultKind
    level: int | None
    code: int


def decode_fsc(fsc: int) -> FaultStatus:
    """Decode a 6-bit DFSC/IFSC (levels 0-3; LPA2 level -1 codes report kind UNKNOWN)."""
    fsc &= 0x3F
    levelled = _LEVELLED_KIND.get(fsc & ~0b11)
    if levelled is not None:
        return FaultStatus(levelled, fsc & 0b11, fsc)
    return FaultStatus(_FIXED.get(fsc, FaultKind.UNKNOWN), None, fsc)


def encode_fsc(kind: FaultKind, level: int | None = None) -> int:
    """The 6-bit fault status code for `kind` (at `level` for translation-related kinds)."""
    if kind in _LEVELLED_BASE:
        if level is None or not 0 <= level <= 3:
            raise ValueError(f"{kind.value} fault needs a level 0..3, got {level}")
        return _LEVELLED_BASE[kind] | level
    if kind in _FIXED_CODE:
        return _FIXED_CODE[kind]
    raise ValueError(f"no fault status code for {kind.value}")


# --- syndromes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataAbort:
    """ISS of a Data Abort (EC 0x24 lower EL / 0x25 same EL).

    isv: bits 23:14 valid (then sas = log2 access size, sse sign-extend, srt register,
    sf 64-bit register, ar acquire/release). wnr: write; s1ptw: stage-2 fault on a stage-1
    table walk; cm: cache maintenance; ea: external abort type; fnv: FAR not valid.
    """

    lower_el: bool
    il: bool
    isv: bool
    sas: int
    sse: bool
    srt: int
    sf: bool
    ar: bool
    vncr: bool
    fnv: bool
    ea: bool
    cm: bool
    s1ptw: bool
    wnr: bool
    dfsc: int

    @property
    def fault(self) -> FaultStatus:
        return decode_fsc(self.dfsc)

    @property
    def access_size(self) -> int | None:
        """Bytes accessed when ISV is set (1, 2, 4, 8), else None."""
        return 1 << self.sas if self.isv else None

    def encode(self) -> int:
        """The full ESR value."""
        iss = (
            (int(self.isv) << 24)
            | ((self.sas & 3) << 22)
            | (int(self.sse) << 21)
            | ((self.srt & 31) << 16)
            | (int(self.sf) << 15)
            | (int(self.ar) << 14)
            | (int(self.vncr) << 13)
            | (int(self.fnv) << 10)
            | (int(self.ea) << 9)
            | (int(self.cm) << 8)
            | (int(self.s1ptw) << 7)
            | (int(self.wnr) << 6)
            | (self.dfsc & 0x3F)
        )
        ec = EC.DABT_LOW if self.lower_el else EC.DABT_CUR
        return (ec << EC_SHIFT) | (IL if self.il else 0) | iss


def data_abort(
    fault: FaultKind,
    level: int | None,
    *,
    write: bool,
    lower_el: bool = True,
    s1ptw: bool = False,
) -> DataAbort:
    """A data-abort syndrome without instruction syndrome (ISV=0), e.g. to inject into EL1."""
    return DataAbort(
        lower_el=lower_el, il=True, isv=False, sas=0, sse=False, srt=0, sf=False, ar=False,
        vncr=False, fnv=False, ea=False, cm=False, s1ptw=s1ptw, wnr=write,
        dfsc=encode_fsc(fault, level),
    )


@dataclass(frozen=True, slots=True)
class InstructionAbort:
    """ISS of an Instruction Abort (EC 0x20 lower EL / 0x21 same EL)."""

    lower_el: bool
    il: bool
    fnv: bool
    ea: bool
    s1ptw: bool
    ifsc: int

    @property
    def fault(self) -> FaultStatus:
        return decode_fsc(self.ifsc)

    def encode(self) -> int:
        iss = (
            (int(self.fnv) << 10)
            | (int(self.ea) << 9)
            | (int(self.s1ptw) << 7)
            | (self.ifsc & 0x3F)
        )
        ec = EC.IABT_LOW if self.lower_el else EC.IABT_CUR
        return (ec << EC_SHIFT) | (IL if self.il else 0) | iss


@dataclass(frozen=True, slots=True)
class SysRegAccess:
    """ISS of a trapped MSR/MRS/system instruction (EC 0x18).

    Field order in the ISS is NOT the instruction's: Op0 21:20, Op2 19:17, Op1 16:14,
    CRn 13:10, Rt 9:5, CRm 4:1, Direction bit 0 (1 = read, MRS).
    """

    il: bool
    enc: SysRegEncoding
    rt: int
    is_read: bool

    @property
    def name(self) -> str:
        return name_of(self.enc)

    @property
    def is_write(self) -> bool:
        return not self.is_read

    def encode(self) -> int:
        e = self.enc
        iss = (
            (e.op0 << 20)
            | (e.op2 << 17)
            | (e.op1 << 14)
            | (e.crn << 10)
            | ((self.rt & 31) << 5)
            | (e.crm << 1)
            | int(self.is_read)
        )
        return (EC.SYS64 << EC_SHIFT) | (IL if self.il else 0) | iss


@dataclass(frozen=True, slots=True)
class ImmediateCall:
    """HVC/SMC/SVC from AArch64 (EC 0x16/0x17/0x15): imm16 in ISS 15:0."""

    ec: EC
    il: bool
    imm16: int

    def encode(self) -> int:
        return (self.ec << EC_SHIFT) | (IL if self.il else 0) | (self.imm16 & 0xFFFF)


@dataclass(frozen=True, slots=True)
class WaitTrap:
    """WFI/WFE trap (EC 0x01): TI bits 1:0 (0 WFI, 1 WFE, 2 WFIT, 3 WFET)."""

    il: bool
    cv: bool
    cond: int
    ti: int

    @property
    def is_wfe(self) -> bool:
        return bool(self.ti & 1)


@dataclass(frozen=True, slots=True)
class OtherSyndrome:
    """Any exception class without a dedicated decoder here; `ec` is EC or the raw int."""

    ec: EC | int
    il: bool
    iss: int


Syndrome = DataAbort | InstructionAbort | SysRegAccess | ImmediateCall | WaitTrap | OtherSyndrome


def esr_ec(esr: int) -> EC | int:
    """Exception class of `esr` (the EC member, or the raw value if reserved)."""
    raw = (esr >> EC_SHIFT) & 0x3F
    try:
        return EC(raw)
    except ValueError:
        return raw


def decode_esr(esr: int) -> Syndrome:
    """Decode an ESR_ELx value into the syndrome record for its exception class."""
    ec = esr_ec(esr)
    il = bool(esr & IL)
    iss = esr & ISS_MASK

    def bit(n: int) -> bool:
        return bool((iss >> n) & 1)

    if ec in (EC.DABT_LOW, EC.DABT_CUR):
        return DataAbort(
            lower_el=ec == EC.DABT_LOW, il=il, isv=bit(24), sas=(iss >> 22) & 3, sse=bit(21),
            srt=(iss >> 16) & 31, sf=bit(15), ar=bit(14), vncr=bit(13), fnv=bit(10), ea=bit(9),
            cm=bit(8), s1ptw=bit(7), wnr=bit(6), dfsc=iss & 0x3F,
        )
    if ec in (EC.IABT_LOW, EC.IABT_CUR):
        return InstructionAbort(
            lower_el=ec == EC.IABT_LOW, il=il, fnv=bit(10), ea=bit(9), s1ptw=bit(7),
            ifsc=iss & 0x3F,
        )
    if ec == EC.SYS64:
        enc = SysRegEncoding(
            (iss >> 20) & 3, (iss >> 14) & 7, (iss >> 10) & 15, (iss >> 1) & 15, (iss >> 17) & 7
        )
        return SysRegAccess(il=il, enc=enc, rt=(iss >> 5) & 31, is_read=bit(0))
    if ec in (EC.HVC64, EC.SMC64, EC.SVC64):
        assert isinstance(ec, EC)
        return ImmediateCall(ec=ec, il=il, imm16=iss & 0xFFFF)
    if ec == EC.WFX:
        return WaitTrap(il=il, cv=bit(24), cond=(iss >> 20) & 15, ti=iss & 3)
    return OtherSyndrome(ec=ec, il=il, iss=iss)
