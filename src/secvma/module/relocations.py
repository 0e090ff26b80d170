"""AArch64 RELA relocations exactly as Linux's arm64 `apply_relocate_add` applies them.

The decision table is data (`RECIPES`, one `RelocRecipe` per type): which operation computes
the value (ABS = S+A, PREL = S+A-P, PAGE = Page(S+A)-Page(P)), which field receives it
(data word, MOVW imm16, or an instruction immediate), and whether overflow is checked.
`apply_relocations` then runs numbered steps per relocation, batching by type because a
module like xfs.ko has ~40,000 of them.

Linux rules kept on purpose (arch/arm64/kernel/module.c, 6.1):
* ABS16/32 overflow when the value is outside [0, 2^n); PREL16/32 outside [-2^(n-1), 2^(n-1)).
* `_NC` types, ABS64, PREL64 and the G3 MOVW forms are unchecked; LDSTn/ADD_ABS_LO12_NC too.
* Signed MOVW (SABS, checked PREL) rewrite the opcode: MOVZ for values >= 0, else MOVN with
  the inverted immediate.
* Immediate fields drop low bits without an alignment check (the kernel does not check).
* JUMP26/CALL26 out of ±128 MiB go through a PLT entry (with MODULE_PLTS); the entry is
  reused when the previous one has the same target (relocations are sorted).
* Erratum 843419 (optional): an ADRP at page offset >= 0xff8 becomes ADR when in range,
  otherwise a branch to an ADRP/ADD/B veneer in the PLT.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum

from secvma.module.errors import (
    PltExhausted,
    RelocationError,
    RelocationOverflow,
    UnsupportedRelocation,
)

M64 = (1 << 64) - 1
_INFO = operator.itemgetter(1)
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U16 = struct.Struct("<H")


class R(IntEnum):
    """ELF relocation type numbers for AArch64 (ELF for the Arm 64-bit Architecture)."""

    ARM_NONE = 0  # the arm64 loader also accepts R_ARM_NONE
    NONE = 256
    ABS64 = 257
    ABS32 = 258
    ABS16 = 259
    PREL64 = 260
    PREL32 = 261
    PREL16 = 262
    MOVW_UABS_G0 = 263
    MOVW_UABS_G0_NC = 264
    MOVW_UABS_G1 = 265
    MOVW_UABS_G1_NC = 266
    MOVW_UABS_G2 = 267
    MOVW_UABS_G2_NC = 268
    MOVW_UABS_G3 = 269
    MOVW_SABS_G0 = 270
    MOVW_SABS_G1 = 271
    MOVW_SABS_G2 = 272
    LD_PREL_LO19 = 273
    ADR_PREL_LO21 = 274
    ADR_PREL_PG_HI21 = 275
    ADR_PREL_PG_HI21_NC = 276
    ADD_ABS_LO12_NC = 277
    LDST8_ABS_LO12_NC = 278
    TSTBR14 = 279
    CONDBR19 = 280
    JUMP26 = 282
    CALL26 = 283
    LDST16_ABS_LO12_NC = 284
    LDST32_ABS_LO12_NC = 285
    LDST64_ABS_LO12_NC = 286
    MOVW_PREL_G0 = 287
    MOVW_PREL_G0_NC = 288
    MOVW_PREL_G1 = 289
    MOVW_PREL_G1_NC = 290
    MOVW_PREL_G2 = 291
    MOVW_PREL_G2_NC = 292
    MOVW_PREL_G3 = 293
    LDST128_ABS_LO12_NC = 299


def reloc_name(rtype: int) -> str:
    try:
        return f"R_AARCH64_{R(rtype).name}"
    except ValueError:
        return f"type {rtype}"


class Op(Enum):
    """`enum aarch64_reloc_op`: how the value is computed from S+A and the place P."""

    NONE = "0"
    ABS = "S+A"
    PREL = "S+A-P"
    PAGE = "Page(S+A)-Page(P)"


class Kind(Enum):
    """Which field is written: `reloc_data`, `reloc_insn_movw` or `reloc_insn_imm`."""

    NONE = "none"
    DATA = "data"
    MOVW = "movw"
    IMM = "imm"
    ADRP = "adrp"  # imm with the optional erratum-843419 path
    BRANCH = "branch"  # imm26 with the PLT fallback


class Imm(Enum):
    """Instruction immediate encodings (`aarch64_insn_encode_immediate`): (shift, mask)."""

    IMM_12 = (10, 0xFFF)
    IMM_14 = (5, 0x3FFF)
    IMM_16 = (5, 0xFFFF)
    IMM_19 = (5, 0x7FFFF)
    IMM_26 = (0, 0x3FFFFFF)
    ADR = (-1, 0x1FFFFF)  # immlo [30:29], immhi [23:5]


@dataclass(frozen=True)
class RelocRecipe:
    """One row of the relocation decision table.

    DATA: `width` bits at the place. MOVW: imm16 from value >> `lsb`, `signed` picks
    MOVZ/MOVN. IMM/ADRP/BRANCH: `length` bits of value >> `lsb` into `imm`.
    """

    rtype: R
    kind: Kind
    op: Op
    width: int = 0
    lsb: int = 0
    length: int = 0
    imm: Imm | None = None
    signed: bool = False
    check: bool = True

    @property
    def place_bytes(self) -> int:
        return self.width // 8 if self.kind is Kind.DATA else 0 if self.kind is Kind.NONE else 4


def _data(t: R, op: Op, width: int, check: bool = True) -> RelocRecipe:
    return RelocRecipe(t, Kind.DATA, op, width=width, check=check)


def _movw(t: R, op: Op, lsb: int, signed: bool, check: bool) -> RelocRecipe:
    return RelocRecipe(t, Kind.MOVW, op, lsb=lsb, imm=Imm.IMM_16, signed=signed, check=check)


def _imm(t: R, op: Op, lsb: int, length: int, imm: Imm, check: bool = True,
         kind: Kind = Kind.IMM) -> RelocRecipe:
    return RelocRecipe(t, kind, op, lsb=lsb, length=length, imm=imm, check=check)


_RECIPE_LIST = [
    RelocRecipe(R.ARM_NONE, Kind.NONE, Op.NONE, check=False),
    RelocRecipe(R.NONE, Kind.NONE, Op.NONE, check=False),
    _data(R.ABS64, Op.ABS, 64, check=False),
    _data(R.ABS32, Op.ABS, 32),
    _data(R.ABS16, Op.ABS, 16),
    _data(R.PREL64, Op.PREL, 64, check=False),
    _data(R.PREL32, Op.PREL, 32),
    _data(R.PREL16, Op.PREL, 16),
    _movw(R.MOVW_UABS_G0_NC, Op.ABS, 0, False, False),
    _movw(R.MOVW_UABS_G0, Op.ABS, 0, False, True),
    _movw(R.MOVW_UABS_G1_NC, Op.ABS, 16, False, False),
    _movw(R.MOVW_UABS_G1, Op.ABS, 16, False, True),
    _movw(R.MOVW_UABS_G2_NC, Op.ABS, 32, False, False),
    _movw(R.MOVW_UABS_G2, Op.ABS, 32, False, True),
    _movw(R.MOVW_UABS_G3, Op.ABS, 48, False, False),
    _movw(R.MOVW_SABS_G0, Op.ABS, 0, True, True),
    _movw(R.MOVW_SABS_G1, Op.ABS, 16, True, True),
    _movw(R.MOVW_SABS_G2, Op.ABS, 32, True, True),
    _movw(R.MOVW_PREL_G0_NC, Op.PREL, 0, False, False),
    _movw(R.MOVW_PREL_G0, Op.PREL, 0, True, True),
    _movw(R.MOVW_PREL_G1_NC, Op.PREL, 16, False, False),
    _movw(R.MOVW_PREL_G1, Op.PREL, 16, True, True),
    _movw(R.MOVW_PREL_G2_NC, Op.PREL, 32, False, False),
    _movw(R.MOVW_PREL_G2, Op.PREL, 32, True, True),
    _movw(R.MOVW_PREL_G3, Op.PREL, 48, True, False),
    _imm(R.LD_PREL_LO19, Op.PREL, 2, 19, Imm.IMM_19),
    _imm(R.ADR_PREL_LO21, Op.PREL, 0, 21, Imm.ADR),
    _imm(R.ADR_PREL_PG_HI21, Op.PAGE, 12, 21, Imm.ADR, kind=Kind.ADRP),
    _imm(R.ADR_PREL_PG_HI21_NC, Op.PAGE, 12, 21, Imm.ADR, check=False, kind=Kind.ADRP),
    _imm(R.ADD_ABS_LO12_NC, Op.ABS, 0, 12, Imm.IMM_12, check=False),
    _imm(R.LDST8_ABS_LO12_NC, Op.ABS, 0, 12, Imm.IMM_12, check=False),
    _imm(R.LDST16_ABS_LO12_NC, Op.ABS, 1, 11, Imm.IMM_12, check=False),
    _imm(R.LDST32_ABS_LO12_NC, Op.ABS, 2, 10, Imm.IMM_12, check=False),
    _imm(R.LDST64_ABS_LO12_NC, Op.ABS, 3, 9, Imm.IMM_12, check=False),
    _imm(R.LDST128_ABS_LO12_NC, Op.ABS, 4, 8, Imm.IMM_12, check=False),
    _imm(R.TSTBR14, Op.PREL, 2, 14, Imm.IMM_14),
    _imm(R.CONDBR19, Op.PREL, 2, 19, Imm.IMM_19),
    _imm(R.JUMP26, Op.PREL, 2, 26, Imm.IMM_26, kind=Kind.BRANCH),
    _imm(R.CALL26, Op.PREL, 2, 26, Imm.IMM_26, kind=Kind.BRANCH),
]
RECIPES: dict[int, RelocRecipe] = {r.rtype.value: r for r in _RECIPE_LIST}
assert len(RECIPES) == len(_RECIPE_LIST) == 39, "every type of apply_relocate_add, once"


# ---------------------------------------------------------------------------- encoders


def encode_imm(imm: Imm, insn: int, value: int) -> int:
    """`aarch64_insn_encode_immediate`: put `value` into the instruction's field."""
    if imm is Imm.ADR:
        immlo, immhi = value & 3, (value >> 2) & 0x7FFFF
        return (insn & ~((3 << 29) | (0x7FFFF << 5)) & 0xFFFFFFFF) | (immlo << 29) | (immhi << 5)
    shift, mask = imm.value
    shift, mask = int(shift), int(mask)
    return (insn & ~(mask << shift) & 0xFFFFFFFF) | ((value & mask) << shift)


def _s64(x: int) -> int:
    x &= M64
    return x - (1 << 64) if x >> 63 else x


def do_reloc(op: Op, place: int, val: int) -> int:
    """`do_reloc` as a signed 64-bit value (the kernel casts the u64 result to s64)."""
    if op is Op.ABS:
        return _s64(val)
    if op is Op.PREL:
        return _s64(val - place)
    if op is Op.PAGE:
        return _s64((val & ~0xFFF) - (place & ~0xFFF))
    return 0


def branch_insn(pc: int, target: int, link: bool = False) -> int:
    """`aarch64_insn_gen_branch_imm`: B/BL from `pc` to `target` (caller checks range)."""
    return (0x94000000 if link else 0x14000000) | (((target - pc) >> 2) & 0x3FFFFFF)


def adrp_insn(pc: int, target: int, rd: int) -> int:
    return encode_imm(Imm.ADR, 0x90000000 | rd, ((target & ~0xFFF) - (pc & ~0xFFF)) >> 12)


def plt_entry(cfg_entry_size: int, pc: int, target: int) -> bytes:
    """A module PLT entry branching to `target` through x16.

    12 B (6.1 `get_plt_entry`): ADRP x16; ADD x16, x16, #lo12; BR x16.
    16 B (4.18): MOVN x16, #~t[15:0]; MOVK #t[31:16], lsl 16; MOVK #t[47:32], lsl 32; BR x16.
    """
    if cfg_entry_size == 12:
        add = 0x91000210 | ((target & 0xFFF) << 10)
        return struct.pack("<III", adrp_insn(pc, target, 16), add, 0xD61F0200)
    t = target & M64
    return struct.pack("<IIII", 0x92800010 | (((~t) & 0xFFFF) << 5),
                       0xF2A00010 | (((t >> 16) & 0xFFFF) << 5),
                       0xF2C00010 | (((t >> 32) & 0xFFFF) << 5), 0xD61F0200)


# ---------------------------------------------------------------------------- PLT state


@dataclass
class PltSection:
    """A `.plt` / `.init.plt` being filled: `mod_plt_sec` (num/max entries) plus its bytes."""

    index: int
    addr: int
    buf: bytearray
    max_entries: int
    entry_size: int
    num_entries: int = 0
    targets: list[int] = field(default_factory=list)  # target of each slot written

    def slot_addr(self, i: int) -> int:
        return self.addr + i * self.entry_size


def _forbidden_adrp(place: int, erratum: bool) -> bool:
    """`is_forbidden_offset_for_adrp`: the last two words of a 4 KiB page (erratum 843419)."""
    return erratum and (place & 0xFFF) >= 0xFF8


def emit_plt_entry(plt: PltSection, target: int, erratum: bool) -> int:
    """`module_emit_plt_entry`: address of a PLT slot branching to `target`.

    Like the kernel, the new entry is always written to slot i, and reused (slot i-1
    returned) when it equals the previous one.
    """
    i = plt.num_entries
    j = i - 1
    if _forbidden_adrp(plt.slot_addr(i), erratum and plt.entry_size == 12):
        i += 1
    if (i + 1) * plt.entry_size > len(plt.buf):
        raise PltExhausted(f"PLT section {plt.index} full ({plt.max_entries} entries)")
    off = i * plt.entry_size
    plt.buf[off : off + plt.entry_size] = plt_entry(plt.entry_size, plt.slot_addr(i), target)
    if j >= 0 and plt.targets and plt.targets[-1] == target:
        return plt.slot_addr(j)
    plt.num_entries += i - j
    plt.targets.append(target)
    if plt.num_entries > plt.max_entries:
        raise PltExhausted(f"PLT section {plt.index}: {plt.num_entries} entries needed, "
                           f"room for {plt.max_entries}")
    return plt.slot_addr(i)


def emit_adrp_veneer(plt: PltSection, place: int, insn: int, page: int, erratum: bool) -> int:
    """`module_emit_veneer_for_adrp`: ADRP rd; ADD rd, rd, #lo12; B place+4."""
    i = plt.num_entries
    plt.num_entries += 1
    if plt.num_entries > plt.max_entries:
        raise PltExhausted(f"PLT section {plt.index}: no room for an erratum-843419 veneer")
    if _forbidden_adrp(plt.slot_addr(i), erratum):
        i = plt.num_entries
        plt.num_entries += 1
    if (i + 1) * plt.entry_size > len(plt.buf):
        raise PltExhausted(f"PLT section {plt.index} full")
    rd = insn & 0x1F
    pc = plt.slot_addr(i)
    add = 0x91000000 | ((page & 0xFFF) << 10) | (rd << 5) | rd
    br = branch_insn(pc + 8, place + 4)
    off = i * plt.entry_size
    plt.buf[off : off + 12] = struct.pack("<III", adrp_insn(pc, page, rd), add, br)
    plt.targets.append(-1)
    return pc


# ---------------------------------------------------------------------------- apply


@dataclass(frozen=True)
class RelocTarget:
    """Where one RELA section applies: the target's bytes, address, and its PLT."""

    name: str
    buf: bytearray
    addr: int
    plt: PltSection | None


def apply_relocations(target: RelocTarget, relas: Sequence[tuple[int, int, int]],
                      symvals: Sequence[int], *, erratum_843419: bool = False,
                      module_plts: bool = True) -> dict[int, int]:
    """Apply `relas` (r_offset, r_info, r_addend) to `target.buf`. Returns counts per type.

    Step 1: group by type and look up the recipe (unknown type -> UnsupportedRelocation).
    Step 2: check every place lies inside the section and every symbol index is valid.
    Step 3: compute S+A per entry and write the field with the recipe's encoder.
    Step 4: raise RelocationOverflow for checked types whose value does not fit.
    """
    # Group by type with C-level passes (a Python loop here costs ~0.4 µs per entry).
    by_type: dict[int, list[tuple[int, int, int]]] = {}
    for r in relas:
        t = r[1] & 0xFFFFFFFF
        lst = by_type.get(t)
        if lst is None:
            by_type[t] = lst = []
        lst.append(r)
    nsyms = len(symvals)
    size = len(target.buf)
    for t in sorted(by_type):  # ascending type: the kernel's sorted order for PLT emission
        lst = by_type[t]
        rec = RECIPES.get(t)
        if rec is None:
            raise UnsupportedRelocation(f"{target.name}: unsupported relocation {reloc_name(t)} "
                                        f"at {lst[0][0]:#x}")
        nb = rec.place_bytes
        if max(lst)[0] + nb > size:  # tuples order by r_offset first
            bad = next(r for r in lst if r[0] + nb > size)
            raise RelocationError(f"{target.name}: {reloc_name(t)} at offset {bad[0]:#x} is "
                                  f"outside the {size}-byte section")
        if max(lst, key=_INFO)[1] >> 32 >= nsyms:  # one type per group: max info = max sym
            bad = next(r for r in lst if r[1] >> 32 >= nsyms)
            raise RelocationError(f"{target.name}: {reloc_name(t)} at {bad[0]:#x} uses symbol "
                                  f"{bad[1] >> 32}; the symbol table has {nsyms} entries")
        _APPLY[rec.kind](rec, target, lst, symvals, erratum_843419, module_plts)
    return {t: len(v) for t, v in by_type.items()}


def _overflow(rec: RelocRecipe, target: RelocTarget, off: int, sval: int) -> RelocationOverflow:
    return RelocationOverflow(f"{target.name}+{off:#x}: {reloc_name(rec.rtype)} value "
                              f"{sval:#x} overflows its field")


def _apply_none(rec: RelocRecipe, target: RelocTarget, lst: Sequence[tuple[int, int, int]],
                symvals: Sequence[int], erratum: bool, plts: bool) -> None:
    return None


def _apply_data(rec: RelocRecipe, target: RelocTarget, lst: Sequence[tuple[int, int, int]],
                symvals: Sequence[int], erratum: bool, plts: bool) -> None:
    """`reloc_data`: the low `width` bits of the value; ABS unsigned, PREL signed checks."""
    buf, base, width = target.buf, target.addr, rec.width
    st = {64: _U64, 32: _U32, 16: _U16}[width]
    pack = st.pack_into
    mask = (1 << width) - 1
    if rec.op is Op.ABS:
        if width == 64:
            for off, info, add in lst:
                pack(buf, off, (symvals[info >> 32] + add) & M64)
            return
        for off, info, add in lst:
            sval = _s64(symvals[info >> 32] + add)
            pack(buf, off, sval & mask)
            if not 0 <= sval <= mask:
                raise _overflow(rec, target, off, sval)
        return
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    for off, info, add in lst:
        sval = _s64(symvals[info >> 32] + add - base - off)
        pack(buf, off, sval & mask)
        if rec.check and not lo <= sval <= hi:
            raise _overflow(rec, target, off, sval)


def _apply_movw(rec: RelocRecipe, target: RelocTarget, lst: Sequence[tuple[int, int, int]],
                symvals: Sequence[int], erratum: bool, plts: bool) -> None:
    """`reloc_insn_movw`: imm16 = value >> lsb; signed forms pick MOVZ (>= 0) or MOVN."""
    buf, base = target.buf, target.addr
    unpack, pack = _U32.unpack_from, _U32.pack_into
    for off, info, add in lst:
        sval = do_reloc(rec.op, base + off, (symvals[info >> 32] + add) & M64)
        imm = (sval >> rec.lsb) & M64
        insn = unpack(buf, off)[0]
        if rec.signed:
            insn &= ~(3 << 29) & 0xFFFFFFFF
            if sval >= 0:
                insn |= 2 << 29
            else:
                imm = ~imm & M64
        pack(buf, off, encode_imm(Imm.IMM_16, insn, imm))
        if rec.check and imm > 0xFFFF:
            raise _overflow(rec, target, off, sval)


def _imm_value(rec: RelocRecipe, sval: int) -> tuple[int, bool]:
    """`reloc_insn_imm` core: (field value, overflowed?) for sval already shifted by lsb."""
    mask = (1 << rec.length) - 1
    lim = 1 << (rec.length - 1)
    return sval & mask, not -lim <= sval < lim


def _apply_imm(rec: RelocRecipe, target: RelocTarget, lst: Sequence[tuple[int, int, int]],
               symvals: Sequence[int], erratum: bool, plts: bool) -> None:
    """`reloc_insn_imm` for LO12/LO19/LO21/TSTBR14/CONDBR19 (no fall-back paths)."""
    buf, base, lsb = target.buf, target.addr, rec.lsb
    assert rec.imm is not None
    unpack, pack = _U32.unpack_from, _U32.pack_into
    mask = (1 << rec.length) - 1
    lim = 1 << (rec.length - 1)
    imm_kind = rec.imm
    if rec.op is Op.ABS and imm_kind is Imm.IMM_12:
        # ADD/LDSTn_ABS_LO12_NC: the hottest imm type; inline the IMM_12 encoder.
        for off, info, add in lst:
            v = ((symvals[info >> 32] + add) >> lsb) & mask
            pack(buf, off, (unpack(buf, off)[0] & 0xFFC003FF) | (v << 10))
        return
    for off, info, add in lst:
        sval = do_reloc(rec.op, base + off, (symvals[info >> 32] + add) & M64) >> lsb
        pack(buf, off, encode_imm(imm_kind, unpack(buf, off)[0], sval & mask))
        if rec.check and not -lim <= sval < lim:
            raise _overflow(rec, target, off, sval)


def _apply_adrp(rec: RelocRecipe, target: RelocTarget, lst: Sequence[tuple[int, int, int]],
                symvals: Sequence[int], erratum: bool, plts: bool) -> None:
    """`reloc_insn_adrp`: PAGE-relative imm21, with the optional erratum-843419 path."""
    buf, base = target.buf, target.addr
    unpack, pack = _U32.unpack_from, _U32.pack_into
    for off, info, add in lst:
        place = base + off
        val = (symvals[info >> 32] + add) & M64
        insn = unpack(buf, off)[0]
        if not _forbidden_adrp(place, erratum):
            sval = _s64((val & ~0xFFF) - (place & ~0xFFF)) >> 12
            imm, ovf = _imm_value(rec, sval)
            v = imm
            pack(buf, off, (insn & 0x9F00001F) | ((v & 3) << 29) | (((v >> 2) & 0x7FFFF) << 5))
            if rec.check and ovf:
                raise _overflow(rec, target, off, sval)
            continue
        # Erratum 843419: try ADR (PREL to the page), else a veneer in the PLT.
        sval = _s64((val & ~0xFFF) - place)
        imm, ovf = _imm_value(rec, sval)
        if not ovf:
            pack(buf, off, encode_imm(Imm.ADR, insn, imm) & ~(1 << 31))
            continue
        if target.plt is None:
            raise PltExhausted(f"{target.name}+{off:#x}: erratum-843419 veneer needs a PLT")
        veneer = emit_adrp_veneer(target.plt, place, insn, val & ~0xFFF, erratum)
        pack(buf, off, branch_insn(place, veneer))


def _apply_branch(rec: RelocRecipe, target: RelocTarget, lst: Sequence[tuple[int, int, int]],
                  symvals: Sequence[int], erratum: bool, plts: bool) -> None:
    """JUMP26/CALL26: imm26 = (S+A-P) >> 2; out of range -> PLT entry (MODULE_PLTS)."""
    buf, base = target.buf, target.addr
    unpack, pack = _U32.unpack_from, _U32.pack_into
    for off, info, add in lst:
        place = base + off
        val = (symvals[info >> 32] + add) & M64
        sval = _s64(val - place) >> 2
        insn = unpack(buf, off)[0] & 0xFC000000
        if -0x2000000 <= sval < 0x2000000:
            pack(buf, off, insn | (sval & 0x3FFFFFF))
            continue
        if not plts or target.plt is None:
            pack(buf, off, insn | (sval & 0x3FFFFFF))
            raise _overflow(rec, target, off, sval)
        slot = emit_plt_entry(target.plt, val, erratum)
        sval = _s64(slot - place) >> 2
        pack(buf, off, insn | (sval & 0x3FFFFFF))
        if not -0x2000000 <= sval < 0x2000000:
            raise _overflow(rec, target, off, sval)


_APPLY = {
    Kind.NONE: _apply_none,
    Kind.DATA: _apply_data,
    Kind.MOVW: _apply_movw,
    Kind.IMM: _apply_imm,
    Kind.ADRP: _apply_adrp,
    Kind.BRANCH: _apply_branch,
}


def relocate_one(rtype: int, buf: bytearray, off: int, place: int, value: int) -> None:
    """Apply a single relocation of `rtype` with S+A = `value` (no PLT); for tests/tools."""
    rec = RECIPES.get(rtype)
    if rec is None:
        raise UnsupportedRelocation(f"unsupported relocation {reloc_name(rtype)}")
    tgt = RelocTarget("buffer", buf, place - off, None)
    from secvma.module.native import ops  # ops imports this module

    if 0 <= off <= M64 and 0 <= rtype <= 0xFFFFFFFF:
        raw = struct.pack("<QQq", off, rtype, 0)
        if ops.apply_relas(tgt, raw, 0, 1, [value], ops.symbol_array([value]), plt_sort=False,
                           erratum_843419=False, module_plts=False) is not None:
            return
    apply_relocations(tgt, [(off, rtype, 0)], [value], module_plts=False)


__all__ = [
    "RECIPES",
    "Imm",
    "Kind",
    "Mapping",
    "Op",
    "PltSection",
    "R",
    "RelocRecipe",
    "RelocTarget",
    "apply_relocations",
    "do_reloc",
    "encode_imm",
    "plt_entry",
    "reloc_name",
    "relocate_one",
]
