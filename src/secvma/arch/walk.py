"""Translation-table walks: one generic walker with named visitors, and the CPU's translation.

`walk` (docs/STYLE.md rule 3, pKVM `kvm_pgtable_walk`) visits the descriptors covering an input range
and calls a visitor with a frozen `VisitCtx`. Every other walk is a short visitor: `get_leaf`
(find the leaf for one address) and the translation itself (`_translate_visitor`).

`translate` models what the MMU does for one access (ARMv8.0 VMSAv8-64, 4KB granule, EL1&0
regime, as QEMU's cortex-a57 implements it):

    AArch64.FullTranslate = AArch64.FirstStageTranslate (AArch64.TranslationTableWalk +
    AArch64.CheckPermission) then AArch64.SecondStageTranslate (AArch64.CheckS2Permission);
    every stage-1 descriptor read goes through stage 2 (AArch64.SecondStageWalk), and a fault
    there is a stage-2 fault with S1PTW=1.

Fault priority per stage (DDI 0487 D8.12 "MMU fault prioritization"; QEMU 7.2
`get_phys_addr_lpae` checks in the same order): translation (VA outside both TTBR ranges,
disabled walk, invalid descriptor), address size (TTBR base, table or output address above the
output size), access flag (AF=0; no hardware AF update, FEAT_HAFDBS absent), permission.

Modelled: TTBR0/TTBR1 selection by VA[55] with TBI0/TBI1, TxSZ 16..39 (clamped like QEMU) and
the start level it implies, EPD0/EPD1, IPS/PS capped by the CPU's PARange, hierarchical
APTable/PXNTable/UXNTable, AP[2:1], PXN/UXN, the implicit PXN of EL0-writable memory, SCTLR.WXN,
SCTLR.M=0 (flat, RWX), VTCR T0SZ/SL0/PS with concatenated start tables, S2AP and XN (FEAT_XNX as
a CPU parameter). Not modelled: PAN, HPD, HA/HD, LPA/LPA2, 16/64KB granules (refused with
`UnsupportedConfig`), contiguous hint, alignment faults, MAIR decoding.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass

from secvma.arch.descriptors import (
    AF,
    AP_SHIFT,
    APTABLE_SHIFT,
    BITS_PER_LEVEL,
    GRANULE_SHIFT,
    MAX_LEVEL,
    OA_BITS,
    OA_MASK,
    PXN,
    PXNTABLE,
    S2_XN_SHIFT,
    UXN,
    UXNTABLE,
    DescKind,
    desc_kind,
    leaf_output,
    level_shift,
    oa_mask,
    s2_exec,
)
from secvma.arch.esr import DataAbort, FaultKind, InstructionAbort, encode_fsc
from secvma.platform import PhysAddr, VirtAddr

ReadU64 = Callable[[PhysAddr], int]
"""read_u64(pa): the 64-bit little-endian word at physical (or intermediate) address pa."""

MASK64 = (1 << 64) - 1
PA_RANGE_BITS = (32, 36, 40, 42, 44, 48, 52)
"""ID_AA64MMFR0_EL1.PARange / TCR.IPS / VTCR.PS encodings -> bits (D23.2 ID_AA64MMFR0_EL1)."""


class UnsupportedConfig(ValueError):
    """A translation-control setting this model does not implement (e.g. a 64KB granule)."""


# --- the generic walker --------------------------------------------------------------------


class Visit(enum.Flag):
    """Which descriptors a walk reports to its visitor."""

    LEAF = enum.auto()
    TABLE_PRE = enum.auto()
    TABLE_POST = enum.auto()
    INVALID = enum.auto()
    ALL = LEAF | TABLE_PRE | TABLE_POST | INVALID


class WalkAction(enum.Enum):
    """What a visitor wants next (None from a visitor means CONTINUE)."""

    CONTINUE = "continue"
    SKIP = "skip"  # from TABLE_PRE: do not descend into this table
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class VisitCtx:
    """One descriptor seen by a walk.

    `addr`: first input address the entry covers; `level`: its level; `old`: the raw descriptor;
    `slot_pa`: where it lives (a PA, or an IPA for a stage-1 table under stage 2); `kind`.
    """

    addr: int
    level: int
    old: int
    slot_pa: PhysAddr
    kind: DescKind


Visitor = Callable[[VisitCtx], WalkAction | None]


def start_table_entries(ia_bits: int, start_level: int) -> int:
    """Entries in the start-level table (several concatenated tables at stage 2)."""
    return 1 << (ia_bits - level_shift(start_level))


def walk(
    read_u64: ReadU64,
    root: PhysAddr,
    start: int,
    size: int,
    visitor: Visitor,
    *,
    visit: Visit = Visit.LEAF,
    start_level: int = 0,
    ia_bits: int = OA_BITS,
) -> WalkAction:
    """Visit, in address order, every descriptor covering [start, start+size) of a table tree.

    The input address space is `ia_bits` wide starting at `start_level` (bits above `ia_bits`
    of `start` are kept in `VisitCtx.addr`, so TTBR1 walks report kernel VAs). Returns STOP if
    a visitor stopped the walk, else CONTINUE.
    """
    if size <= 0:
        return WalkAction.CONTINUE
    span = 1 << ia_bits
    high = start & ~(span - 1) & MASK64
    lo = start & (span - 1)
    hi = min(lo + size, span)
    entries = start_table_entries(ia_bits, start_level)
    return _walk_table(read_u64, root, start_level, entries, 0, lo, hi, high, visitor, visit)


def _walk_table(
    read_u64: ReadU64,
    table: PhysAddr,
    level: int,
    entries: int,
    table_base: int,
    lo: int,
    hi: int,
    high: int,
    visitor: Visitor,
    visit: Visit,
) -> WalkAction:
    shift = level_shift(level)
    first = (lo - table_base) >> shift
    last = min(entries - 1, (hi - 1 - table_base) >> shift)
    for index in range(first, last + 1):
        entry_base = table_base + (index << shift)
        slot = PhysAddr(table + 8 * index)
        raw = read_u64(slot)
        kind = desc_kind(raw, level)
        ctx = VisitCtx(high | entry_base, level, raw, slot, kind)
        if kind is DescKind.TABLE:
            action = _call(visitor, ctx, Visit.TABLE_PRE in visit)
            if action is WalkAction.STOP:
                return action
            if action is not WalkAction.SKIP:
                child = PhysAddr(raw & OA_MASK)
                sub_lo, sub_hi = max(lo, entry_base), min(hi, entry_base + (1 << shift))
                action = _walk_table(read_u64, child, level + 1, 1 << BITS_PER_LEVEL,
                                     entry_base, sub_lo, sub_hi, high, visitor, visit)
                if action is WalkAction.STOP:
                    return action
            if _call(visitor, ctx, Visit.TABLE_POST in visit) is WalkAction.STOP:
                return WalkAction.STOP
        else:
            wanted = Visit.INVALID if kind is DescKind.INVALID else Visit.LEAF
            if _call(visitor, ctx, wanted in visit) is WalkAction.STOP:
                return WalkAction.STOP
    return WalkAction.CONTINUE


def _call(visitor: Visitor, ctx: VisitCtx, wanted: bool) -> WalkAction:
    if not wanted:
        return WalkAction.CONTINUE
    return visitor(ctx) or WalkAction.CONTINUE


# --- get_leaf: the simplest visitor ----------------------------------------------------------


@dataclass(slots=True)
class _LeafData:
    found: VisitCtx | None = None


def _leaf_visitor(data: _LeafData, ctx: VisitCtx) -> WalkAction:
    data.found = ctx
    return WalkAction.STOP


def get_leaf(
    read_u64: ReadU64, root: PhysAddr, addr: int, *, start_level: int = 0, ia_bits: int = OA_BITS
) -> VisitCtx:
    """The descriptor that ends the walk for `addr`: a leaf or the first invalid entry."""
    data = _LeafData()
    walk(read_u64, root, addr, 1, functools.partial(_leaf_visitor, data),
         visit=Visit.LEAF | Visit.INVALID, start_level=start_level, ia_bits=ia_bits)
    assert data.found is not None, "a one-address walk always ends on a leaf or invalid entry"
    return data.found


# --- translation ---------------------------------------------------------------------------


class AccessType(enum.Enum):
    """The kind of access being translated."""

    LOAD = "load"
    STORE = "store"
    FETCH = "fetch"


class Perm(enum.Flag):
    """Effective access rights at one exception level."""

    NONE = 0
    R = enum.auto()
    W = enum.auto()
    X = enum.auto()


_NEEDED = {AccessType.LOAD: Perm.R, AccessType.STORE: Perm.W, AccessType.FETCH: Perm.X}


@dataclass(frozen=True, slots=True)
class CpuFeatures:
    """The implementation facts translation depends on."""

    pa_bits: int = 44
    feat_xnx: bool = False

    @property
    def pa_range(self) -> int:
        return PA_RANGE_BITS.index(self.pa_bits)


CORTEX_A57 = CpuFeatures(pa_bits=44, feat_xnx=False)
"""QEMU's cortex-a57: ID_AA64MMFR0_EL1.PARange = 0b0100 (44 bits), ARMv8.0 (no FEAT_XNX)."""


@dataclass(frozen=True, slots=True)
class Fault:
    """A translation fault as the CPU reports it (DFSC/IFSC kind and level, which stage).

    `s1ptw`: a stage-2 fault taken while reading a stage-1 table (`ipa` is then the table
    entry's IPA). `ipa` is set for stage-2 faults (what HPFAR_EL2 reports).
    """

    kind: FaultKind
    level: int
    stage: int
    s1ptw: bool
    access: AccessType
    el: int
    va: int
    ipa: int | None = None

    @property
    def is_write(self) -> bool:
        return self.access is AccessType.STORE

    @property
    def is_fetch(self) -> bool:
        return self.access is AccessType.FETCH

    @property
    def fsc(self) -> int:
        return encode_fsc(self.kind, self.level)

    def esr(self, *, target_el: int) -> int:
        """ESR_ELx value (ISV=0) the CPU would report when taking this fault to `target_el`."""
        lower = self.el < target_el
        if self.is_fetch:
            return InstructionAbort(lower_el=lower, il=True, fnv=False, ea=False,
                                    s1ptw=self.s1ptw, ifsc=self.fsc).encode()
        return DataAbort(lower_el=lower, il=True, isv=False, sas=0, sse=False, srt=0, sf=False,
                         ar=False, vncr=False, fnv=False, ea=False, cm=False, s1ptw=self.s1ptw,
                         wnr=self.is_write, dfsc=self.fsc).encode()


@dataclass(frozen=True, slots=True)
class StageLeaf:
    """The leaf one stage ended on, and the rights it grants at the accessing EL."""

    level: int
    desc: int
    slot: PhysAddr
    perms: Perm


@dataclass(frozen=True, slots=True)
class Translation:
    """A successful translation: output address and the combined rights at the EL."""

    va: int
    ipa: int
    pa: PhysAddr
    perms: Perm
    s1: StageLeaf | None
    s2: StageLeaf | None


class _WalkFault(Exception):
    """Internal: a fault raised from inside a walk (stage-2 fault on a stage-1 table read)."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(fault)
        self.fault = fault


@dataclass(slots=True)
class _TransData:
    """Accumulator of `_translate_visitor`: hierarchical attributes and the outcome."""

    stage: int
    outputsize: int
    pxntable: bool = False
    uxntable: bool = False
    aptable: int = 0
    fault: tuple[FaultKind, int] | None = None
    leaf: VisitCtx | None = None


def _translate_visitor(data: _TransData, ctx: VisitCtx) -> WalkAction:
    """AArch64.TranslationTableWalk, one descriptor: invalid, address size, table attrs, AF."""
    if ctx.kind is DescKind.INVALID:
        data.fault = (FaultKind.TRANSLATION, ctx.level)
        return WalkAction.STOP
    if ctx.kind is DescKind.TABLE:
        if (ctx.old & OA_MASK) >> data.outputsize:
            data.fault = (FaultKind.ADDRESS_SIZE, ctx.level)
            return WalkAction.STOP
        if data.stage == 1:
            data.pxntable |= bool(ctx.old & PXNTABLE)
            data.uxntable |= bool(ctx.old & UXNTABLE)
            data.aptable |= (ctx.old >> APTABLE_SHIFT) & 0b11
        return WalkAction.CONTINUE
    if (ctx.old & oa_mask(ctx.level)) >> data.outputsize:
        data.fault = (FaultKind.ADDRESS_SIZE, ctx.level)
    elif not ctx.old & AF:
        data.fault = (FaultKind.ACCESS_FLAG, ctx.level)
    data.leaf = ctx
    return WalkAction.STOP


def s1_perms(desc: int, el: int, *, aptable: int = 0, pxntable: bool = False,
             uxntable: bool = False, wxn: bool = False) -> Perm:
    """Rights a stage-1 leaf grants at `el` (AArch64.CheckPermission, ARMv8.0, PAN off).

    AP[2:1] with APTable applied (APTable[1] forces read-only, APTable[0] removes EL0 access);
    EL1 may never execute EL0-writable memory; WXN removes execute from writable memory.
    """
    ap2 = bool(desc & (1 << (AP_SHIFT + 1))) or bool(aptable & 0b10)
    ap1 = bool(desc & (1 << AP_SHIFT)) and not aptable & 0b01
    user_w = ap1 and not ap2
    if el == 0:
        r, w, xn = ap1, user_w, bool(desc & UXN) or uxntable
    else:
        r, w, xn = True, not ap2, bool(desc & PXN) or pxntable or user_w
    if wxn and w:
        xn = True
    return (Perm.R if r else Perm.NONE) | (Perm.W if w else Perm.NONE) | (
        Perm.NONE if xn else Perm.X)


def s2_perms(desc: int, el: int, *, feat_xnx: bool) -> Perm:
    """Rights a stage-2 leaf grants to an access from `el` (AArch64.CheckS2Permission)."""
    r = bool(desc & (1 << AP_SHIFT))
    w = bool(desc & (1 << (AP_SHIFT + 1)))
    x = s2_exec((desc >> S2_XN_SHIFT) & 0b11, el0=el == 0, feat_xnx=feat_xnx)
    return (Perm.R if r else Perm.NONE) | (Perm.W if w else Perm.NONE) | (
        Perm.X if x else Perm.NONE)


def _start_level(inputsize: int) -> int:
    """First lookup level for a 4KB-granule input size (AArch64.TranslationTableWalk)."""
    return MAX_LEVEL + 1 - -(-(inputsize - GRANULE_SHIFT) // BITS_PER_LEVEL)


def _base(ttbr: int, inputsize: int, start_level: int) -> int:
    """Start-table address from a TTBR/VTTBR: bits 47:x, x = log2(start table bytes)."""
    align = 3 + inputsize - level_shift(start_level)
    return ttbr & ((1 << OA_BITS) - 1) & ~((1 << max(align, 1)) - 1)


def _clamp_tsz(tsz: int) -> int:
    return min(max(tsz, 16), 39)


@dataclass(frozen=True, slots=True)
class _Regime:
    """One resolved translation stage: where to start and how wide."""

    root: int
    start_level: int
    inputsize: int
    outputsize: int


def translate_stage2(
    read_u64: ReadU64,
    ipa: int,
    access: AccessType,
    el: int,
    *,
    vtcr: int,
    vttbr: int,
    cpu: CpuFeatures = CORTEX_A57,
    s1ptw: bool = False,
    va: int | None = None,
) -> StageLeaf | Fault:
    """Stage-2 translation of `ipa` (AArch64.SecondStageTranslate / AArch64.SecondStageWalk).

    With `s1ptw` the access is a stage-1 table read: checked as a read, reported with S1PTW=1.
    """
    fault_va = ipa if va is None else va

    def fault(kind: FaultKind, level: int) -> Fault:
        return Fault(kind, level, 2, s1ptw, access, el, fault_va, ipa)

    if (vtcr >> 14) & 0b11 != 0b00:
        raise UnsupportedConfig(f"VTCR_EL2.TG0={(vtcr >> 14) & 3}: only the 4KB granule")
    inputsize = 64 - _clamp_tsz(vtcr & 0x3F)
    sl0 = (vtcr >> 6) & 0b11
    outputsize = PA_RANGE_BITS[min((vtcr >> 16) & 0b111, cpu.pa_range)]
    start_level = 2 - sl0
    if sl0 == 0b11:
        return fault(FaultKind.TRANSLATION, 0)
    resolved = inputsize - level_shift(start_level)
    if resolved < 1 or resolved > BITS_PER_LEVEL + 4 or ipa >> inputsize:
        return fault(FaultKind.TRANSLATION, 0)
    root = _base(vttbr, inputsize, start_level)
    if root >> outputsize:
        return fault(FaultKind.ADDRESS_SIZE, 0)
    data = _TransData(stage=2, outputsize=outputsize)
    walk(read_u64, PhysAddr(root), ipa, 1, functools.partial(_translate_visitor, data),
         visit=Visit.ALL, start_level=start_level, ia_bits=inputsize)
    if data.fault is not None:
        return fault(*data.fault)
    leaf = data.leaf
    assert leaf is not None, "a stage-2 walk ends on a leaf or a fault"
    perms = s2_perms(leaf.old, el, feat_xnx=cpu.feat_xnx)
    needed = Perm.R if s1ptw else _NEEDED[access]
    if needed not in perms:
        return fault(FaultKind.PERMISSION, leaf.level)
    return StageLeaf(leaf.level, leaf.old, leaf.slot_pa, perms)


def _s1_regime(va: int, tcr: int, ttbr0: int, ttbr1: int, cpu: CpuFeatures) -> _Regime | None:
    """TTBR selection (AArch64.TranslationTableWalk, QEMU aa64_va_parameters); None = no base."""
    upper = bool(va >> 55 & 1)
    if upper:
        tsz, tbi, epd = (tcr >> 16) & 0x3F, (tcr >> 38) & 1, (tcr >> 23) & 1
        if (tcr >> 30) & 0b11 != 0b10:
            raise UnsupportedConfig(f"TCR_EL1.TG1={(tcr >> 30) & 3}: only the 4KB granule")
    else:
        tsz, tbi, epd = tcr & 0x3F, (tcr >> 37) & 1, (tcr >> 7) & 1
        if (tcr >> 14) & 0b11 != 0b00:
            raise UnsupportedConfig(f"TCR_EL1.TG0={(tcr >> 14) & 3}: only the 4KB granule")
    inputsize = 64 - _clamp_tsz(tsz)
    top = 55 if tbi else 63
    span = (va >> inputsize) & ((1 << (top - inputsize + 1)) - 1)
    if span != (((1 << (top - inputsize + 1)) - 1) if upper else 0) or epd:
        return None
    start_level = _start_level(inputsize)
    outputsize = PA_RANGE_BITS[min((tcr >> 32) & 0b111, cpu.pa_range)]
    root = _base(ttbr1 if upper else ttbr0, inputsize, start_level)
    return _Regime(root, start_level, inputsize, outputsize)


def s1_output_bits(va: int, tcr: int, ttbr0: int, ttbr1: int,
                   cpu: CpuFeatures = CORTEX_A57) -> int | None:
    """The stage-1 output size (bits) `translate` uses for `va` (None: no translation regime)."""
    regime = _s1_regime(va & MASK64, tcr, ttbr0, ttbr1, cpu)
    return None if regime is None else regime.outputsize


def translate(
    read_u64: ReadU64,
    va: int,
    access: AccessType,
    el: int,
    *,
    sctlr: int,
    tcr: int,
    ttbr0: int,
    ttbr1: int,
    vtcr: int = 0,
    vttbr: int = 0,
    stage2_enabled: bool = False,
    cpu: CpuFeatures = CORTEX_A57,
) -> Translation | Fault:
    """Translate `va` for an `access` from EL`el` (0 or 1) as the CPU would (AArch64.FullTranslate).

    `read_u64` reads physical memory; stage-1 table reads go through stage 2 when
    `stage2_enabled` (HCR_EL2.VM). Returns the output PA and rights, or the first Fault.
    """
    if el not in (0, 1):
        raise ValueError(f"el={el}: only the EL1&0 regime is modelled")
    va &= MASK64
    s1 = _translate_s1(read_u64, va, access, el, sctlr=sctlr, tcr=tcr, ttbr0=ttbr0,
                       ttbr1=ttbr1, vtcr=vtcr, vttbr=vttbr, stage2_enabled=stage2_enabled,
                       cpu=cpu)
    if isinstance(s1, Fault):
        return s1
    ipa, s1_leaf, s1_perm = s1
    if not stage2_enabled:
        return Translation(va, ipa, PhysAddr(ipa), s1_perm, s1_leaf, None)
    s2 = translate_stage2(read_u64, ipa, access, el, vtcr=vtcr, vttbr=vttbr, cpu=cpu, va=va)
    if isinstance(s2, Fault):
        return s2
    pa = leaf_output(s2.desc, s2.level, ipa)
    return Translation(va, ipa, pa, s1_perm & s2.perms, s1_leaf, s2)


def _translate_s1(
    read_u64: ReadU64,
    va: int,
    access: AccessType,
    el: int,
    *,
    sctlr: int,
    tcr: int,
    ttbr0: int,
    ttbr1: int,
    vtcr: int,
    vttbr: int,
    stage2_enabled: bool,
    cpu: CpuFeatures,
) -> tuple[int, StageLeaf | None, Perm] | Fault:
    """AArch64.FirstStageTranslate: (IPA, leaf, rights) or the stage-1/s1ptw fault."""

    def fault(kind: FaultKind, level: int) -> Fault:
        return Fault(kind, level, 1, False, access, el, va)

    if not sctlr & 1:  # SCTLR_EL1.M: stage 1 off, flat and RWX
        if va >> cpu.pa_bits:
            return fault(FaultKind.ADDRESS_SIZE, 0)
        return va, None, Perm.R | Perm.W | Perm.X
    regime = _s1_regime(va, tcr, ttbr0, ttbr1, cpu)
    if regime is None:
        return fault(FaultKind.TRANSLATION, 0)
    if regime.root >> regime.outputsize:
        return fault(FaultKind.ADDRESS_SIZE, 0)
    reader = read_u64
    if stage2_enabled:
        reader = functools.partial(_read_via_stage2, read_u64, access, el, vtcr, vttbr, cpu, va)
    data = _TransData(stage=1, outputsize=regime.outputsize)
    try:
        walk(reader, PhysAddr(regime.root), va, 1, functools.partial(_translate_visitor, data),
             visit=Visit.ALL, start_level=regime.start_level, ia_bits=regime.inputsize)
    except _WalkFault as exc:
        return exc.fault
    if data.fault is not None:
        return fault(*data.fault)
    leaf = data.leaf
    assert leaf is not None, "a stage-1 walk ends on a leaf or a fault"
    perms = s1_perms(leaf.old, el, aptable=data.aptable, pxntable=data.pxntable,
                     uxntable=data.uxntable, wxn=bool(sctlr & (1 << 19)))
    if _NEEDED[access] not in perms:
        return fault(FaultKind.PERMISSION, leaf.level)
    ipa = leaf_output(leaf.old, leaf.level, va)
    return ipa, StageLeaf(leaf.level, leaf.old, leaf.slot_pa, perms), perms


def _read_via_stage2(
    read_u64: ReadU64,
    access: AccessType,
    el: int,
    vtcr: int,
    vttbr: int,
    cpu: CpuFeatures,
    va: int,
    ipa: PhysAddr,
) -> int:
    """A stage-1 descriptor read under stage 2 (AArch64.SecondStageWalk)."""
    s2 = translate_stage2(read_u64, ipa, access, el, vtcr=vtcr, vttbr=vttbr, cpu=cpu,
                          s1ptw=True, va=va)
    if isinstance(s2, Fault):
        raise _WalkFault(s2)
    return read_u64(leaf_output(s2.desc, s2.level, ipa))


def hpfar_of(fault: Fault) -> int:
    """HPFAR_EL2 for a stage-2 fault: FIPA = IPA[47:12] in bits 43:4."""
    if fault.ipa is None:
        raise ValueError("HPFAR is only defined for stage-2 faults")
    return ((fault.ipa & OA_MASK) >> GRANULE_SHIFT) << 4


def va_in_ttbr1(va: int) -> bool:
    """Whether `va` selects TTBR1 (VA[55] set)."""
    return bool((va >> 55) & 1)


def as_va(value: int) -> VirtAddr:
    """`value` as a 64-bit VirtAddr."""
    return VirtAddr(value & MASK64)
