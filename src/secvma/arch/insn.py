"""Decode of the A64 store instructions a trapped page-table write can be.

When stage 2 write-protects a page-table page, the trapping store reaches EL2 with only the
faulting address (and, if ISV=1, one register). To emulate it the hypervisor needs the whole
instruction: every address written, the bytes, the base-register writeback and, for a
store-exclusive, the status register. This module is that decoder.

Arm ARM (DDI 0487) C4.1.66 "Loads and Stores" encoding classes, and the instruction pages in C6.2
(operation pseudo-code: `Mem[address, datasize/8, AccType_NORMAL] = data`, `X[n]` / `SP[]`):

    class (bits)                                   forms decoded here
    xx111V01 ........ ........ ........  ldst_pos   STR/STRB/STRH (unsigned imm), STR <V>
    xx111V00 ..0..... ....00.. ........  ldst_unscaled  STUR*, STUR <V>
    xx111V00 ..0..... ....01.. ........  ldst_immpost   STR* post-index
    xx111V00 ..0..... ....10.. ........  ldst_unpriv    STTR*
    xx111V00 ..0..... ....11.. ........  ldst_immpre    STR* pre-index
    xx111V00 ..1..... ....10.. ........  ldst_regoff    STR* (register, extend/shift)
    xx111000 ..1..... ....00.. ........  memop          SWP, LDADD/LDCLR/LDEOR/LDSET (+ST<op>
                                                       aliases; FEAT_LSE): read-modify-write,
                                                       `rmw` names the operation; other
                                                       <op>s (min/max) and SIMD: unsupported
    xx101V0m mL...... ........ ........  ldstpair       STP/STNP (32/64-bit, S/D/Q)
    xx001000 o2 L o1 ... o0 ...           ldstexcl       STXR/STLXR[B/H], STXP/STLXP, STLR[B/H],
                                                       STLLR[B/H]; CAS (FEAT_LSE, `rmw` "cas");
                                                       CASP: unsupported
    xx011001 opc 0 ... 00 ...            ldapstl_unscaled  STLUR[B/H] (FEAT_LRCPC2)
    1101 0101 0000 1011 0111 0100 001 Rt  DC ZVA      (SYS #3, C7, C4, #1)

Conventions:
* Register reads go through `read_reg(n)`: n in 0..30 is Xn, n == 31 is SP. The decoder only
  calls it with 31 where the encoding names SP (a base register Rn); Rt/Rt2/Rm == 31 is the zero
  register and is read as 0 without calling back.
* SIMD&FP stores (STR/STUR/STP/STNP of B/H/S/D/Q registers) are decoded fully when the caller
  passes `read_vreg(n) -> int` (the 128-bit Vn); without it they raise
  `UnsupportedInstruction(reason=SIMD_WITHOUT_CALLBACK)`. Structure stores (ST1-ST4) are always
  unsupported.
* Data is little-endian (SCTLR_ELx.EE == 0, as Linux arm64 runs); `Access.data` is the bytes.
* Addresses are 64-bit and wrap; tag bits are kept (the caller applies TBI if it wants).
* Writeback forms whose Rt == Rn (CONSTRAINED UNPREDICTABLE for stores) store the value Rt had
  before the writeback, as QEMU does.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from secvma.platform import VirtAddr

RegReader = Callable[[int], int]
"""read_reg(n): Xn for n in 0..30, SP for n == 31 (never called for XZR)."""

VRegReader = Callable[[int], int]
"""read_vreg(n): the 128-bit SIMD&FP register Vn, n in 0..31."""

MASK64 = (1 << 64) - 1
SP = 31
ZR = 31


class StoreKind(enum.Enum):
    """Which family a decoded store belongs to."""

    PLAIN = "plain"  # STR/STUR/STTR (any width, any addressing mode)
    PAIR = "pair"  # STP/STNP
    EXCLUSIVE = "exclusive"  # STXR/STLXR (+B/H)
    EXCLUSIVE_PAIR = "exclusive-pair"  # STXP/STLXP
    RELEASE = "release"  # STLR/STLLR/STLUR (+B/H)
    ZERO_BLOCK = "zero-block"  # DC ZVA
    ATOMIC = "atomic"  # SWP, LD<op>/ST<op>, CAS (FEAT_LSE): read-modify-write, see `rmw`


class AddrMode(enum.Enum):
    """How the address is formed."""

    OFFSET = "offset"  # [Xn, #imm] (scaled or unscaled), no writeback
    PRE_INDEX = "pre-index"  # [Xn, #imm]!
    POST_INDEX = "post-index"  # [Xn], #imm
    REGISTER = "register"  # [Xn, Rm{, extend #amount}]
    BASE = "base"  # [Xn] (exclusive, release, DC ZVA)


class UnsupportedReason(enum.Enum):
    """Why `decode_store` refused an instruction word."""

    NOT_A_STORE = "not a store"
    ATOMIC = "atomic read-modify-write (FEAT_LSE)"
    COMPARE_AND_SWAP = "compare-and-swap (FEAT_LSE)"
    SIMD_WITHOUT_CALLBACK = "SIMD&FP store, no read_vreg callback given"
    SIMD_STRUCTURE = "SIMD structure store (ST1-ST4)"
    MEMORY_TAGGING = "memory-tagging store (FEAT_MTE)"
    UNALLOCATED = "unallocated encoding"
    UNRECOGNIZED = "load/store encoding not decoded here"


class UnsupportedInstruction(ValueError):
    """`insn` is not a store this decoder emulates; `reason` says which case."""

    def __init__(self, insn: int, reason: UnsupportedReason, detail: str = "") -> None:
        self.insn = insn
        self.reason = reason
        self.detail = detail
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{insn:#010x}: {reason.value}{extra}")


@dataclass(frozen=True, slots=True)
class Access:
    """One single-copy store of `size` bytes of `value` (little-endian) at `address`."""

    address: VirtAddr
    size: int
    value: int

    @property
    def data(self) -> bytes:
        return self.value.to_bytes(self.size, "little")


@dataclass(frozen=True, slots=True)
class Writeback:
    """Base-register update: `reg` (0..30 = Xn, 31 = SP) := `value`."""

    reg: int
    value: int


@dataclass(frozen=True, slots=True)
class StoreOp:
    """A decoded store, ready to emulate.

    `accesses` in program order; `writeback` to apply after them; `status_reg` is the Ws of a
    store-exclusive (31 = WZR) that the emulator sets to 0 (success) or 1; `sources` the data
    registers (31 = zero register); `simd` whether they are V registers.
    """

    kind: StoreKind
    mnemonic: str
    mode: AddrMode
    accesses: tuple[Access, ...]
    writeback: Writeback | None = None
    status_reg: int | None = None
    sources: tuple[int, ...] = ()
    simd: bool = False
    release: bool = False
    rmw: str | None = None
    """ATOMIC only: how memory's new value follows from its old one and the access's `value`
    (the operand Xs): "swp" value, "add" old + value, "clr" old & ~value, "eor" old ^ value,
    "set" old | value, "cas" `swap` if old == value else old. `apply_rmw` computes it."""
    result_reg: int | None = None
    """ATOMIC only: the register that receives the old memory value (zero-extended; 31 = ZR,
    discarded)."""
    swap: int = 0
    """CAS only: the value stored when memory equals the comparand."""

    @property
    def address(self) -> VirtAddr:
        """Lowest-program-order address (the first access)."""
        return self.accesses[0].address

    @property
    def size(self) -> int:
        """Total bytes written."""
        return sum(a.size for a in self.accesses)

    @property
    def is_exclusive(self) -> bool:
        return self.status_reg is not None


# --- helpers -------------------------------------------------------------------------------


def _bits(insn: int, hi: int, lo: int) -> int:
    return (insn >> lo) & ((1 << (hi - lo + 1)) - 1)


def _sext(value: int, width: int) -> int:
    sign = 1 << (width - 1)
    return (value & (sign - 1)) - (value & sign)


@dataclass(frozen=True, slots=True)
class _Regs:
    """The register reading rules of one decode call."""

    read_reg: RegReader
    read_vreg: VRegReader | None
    insn: int

    def base(self, n: int) -> int:
        return self.read_reg(n) & MASK64

    def gpr(self, t: int, size: int) -> int:
        return 0 if t == ZR else self.read_reg(t) & ((1 << (8 * size)) - 1)

    def vreg(self, t: int, size: int) -> int:
        if self.read_vreg is None:
            raise UnsupportedInstruction(self.insn, UnsupportedReason.SIMD_WITHOUT_CALLBACK)
        return self.read_vreg(t) & ((1 << (8 * size)) - 1)

    def data(self, t: int, size: int, simd: bool) -> int:
        return self.vreg(t, size) if simd else self.gpr(t, size)


_GPR_SUFFIX = {0: "b", 1: "h", 2: "", 3: ""}


def _simd_size(size_bits: int, opc: int) -> int | None:
    """Bytes of a SIMD&FP single-register store, None when not a store (C6.3 STR (imm, SIMD))."""
    if opc == 0b00:
        return 1 << size_bits
    if opc == 0b10 and size_bits == 0b00:
        return 16
    return None


def _addressed(
    regs: _Regs, n: int, offset: int, mode: AddrMode
) -> tuple[int, Writeback | None]:
    base = regs.base(n)
    if mode is AddrMode.POST_INDEX:
        return base, Writeback(n, (base + offset) & MASK64)
    address = (base + offset) & MASK64
    return address, Writeback(n, address) if mode is AddrMode.PRE_INDEX else None


# --- classes -------------------------------------------------------------------------------


def _single(
    insn: int, regs: _Regs, mode: AddrMode, offset_of: Callable[[int], int], mnemonic: str
) -> StoreOp:
    """STR/STUR/STTR families: one register, one access. `offset_of(scale)` gives the offset."""
    size_bits, simd, opc = _bits(insn, 31, 30), bool(insn & (1 << 26)), _bits(insn, 23, 22)
    t, n = _bits(insn, 4, 0), _bits(insn, 9, 5)
    if simd:
        size = _simd_size(size_bits, opc)
        if size is None:
            raise UnsupportedInstruction(insn, UnsupportedReason.NOT_A_STORE, "SIMD&FP load")
        if mnemonic == "sttr":
            raise UnsupportedInstruction(insn, UnsupportedReason.UNALLOCATED)
    else:
        if opc != 0b00:
            raise UnsupportedInstruction(insn, UnsupportedReason.NOT_A_STORE, "load or prfm")
        size = 1 << size_bits
        mnemonic += _GPR_SUFFIX[size_bits]
    scale = size.bit_length() - 1
    value = regs.data(t, size, simd)
    address, wb = _addressed(regs, n, offset_of(scale), mode)
    return StoreOp(StoreKind.PLAIN, mnemonic, mode, (Access(VirtAddr(address), size, value),),
                   wb, sources=(t,), simd=simd)


def _decode_unsigned_imm(insn: int, regs: _Regs) -> StoreOp:
    """C6.2 STR (immediate), unsigned offset: imm12 << scale."""
    imm12 = _bits(insn, 21, 10)
    return _single(insn, regs, AddrMode.OFFSET, lambda scale: imm12 << scale, "str")


_IMM9_FORMS = {
    0b00: (AddrMode.OFFSET, "stur"),
    0b01: (AddrMode.POST_INDEX, "str"),
    0b10: (AddrMode.OFFSET, "sttr"),
    0b11: (AddrMode.PRE_INDEX, "str"),
}


def _decode_imm9(insn: int, regs: _Regs) -> StoreOp:
    """C6.2 STUR / STR (immediate) post- and pre-index / STTR: signed imm9, unscaled."""
    mode, mnemonic = _IMM9_FORMS[_bits(insn, 11, 10)]
    imm9 = _sext(_bits(insn, 20, 12), 9)
    return _single(insn, regs, mode, lambda _scale: imm9, mnemonic)


def _extend(value: int, option: int) -> int:
    """ExtendReg for the register-offset forms: UXTW, LSL/UXTX, SXTW, SXTX."""
    if option == 0b010:
        return value & 0xFFFF_FFFF
    if option == 0b110:
        return _sext(value & 0xFFFF_FFFF, 32) & MASK64
    return value & MASK64


def _decode_register_offset(insn: int, regs: _Regs) -> StoreOp:
    """C6.2 STR (register): [Xn|SP, (W|X)m{, extend {#amount}}], amount = S ? scale : 0."""
    option, shift_on, m = _bits(insn, 15, 13), bool(insn & (1 << 12)), _bits(insn, 20, 16)
    if not option & 0b010:
        raise UnsupportedInstruction(insn, UnsupportedReason.UNALLOCATED, "extend option")
    rm = 0 if m == ZR else regs.read_reg(m)
    index = _extend(rm, option)

    def offset_of(scale: int) -> int:
        return (index << (scale if shift_on else 0)) & MASK64

    return _single(insn, regs, AddrMode.REGISTER, offset_of, "str")


_PAIR_MODES = {
    0b00: AddrMode.OFFSET,  # STNP
    0b01: AddrMode.POST_INDEX,
    0b10: AddrMode.OFFSET,
    0b11: AddrMode.PRE_INDEX,
}


def _decode_pair(insn: int, regs: _Regs) -> StoreOp:
    """C6.2 STP / STNP (GPR 32/64-bit; SIMD&FP S/D/Q): imm7 << scale, two accesses."""
    opc, simd, mode_bits = _bits(insn, 31, 30), bool(insn & (1 << 26)), _bits(insn, 24, 23)
    if insn & (1 << 22):
        raise UnsupportedInstruction(insn, UnsupportedReason.NOT_A_STORE, "load pair")
    if simd:
        if opc == 0b11:
            raise UnsupportedInstruction(insn, UnsupportedReason.UNALLOCATED)
        size = 4 << opc
    elif opc == 0b01:
        if mode_bits == 0b00:
            raise UnsupportedInstruction(insn, UnsupportedReason.UNALLOCATED)
        raise UnsupportedInstruction(insn, UnsupportedReason.MEMORY_TAGGING, "STGP")
    elif opc == 0b11:
        raise UnsupportedInstruction(insn, UnsupportedReason.UNALLOCATED)
    else:
        size = 4 << (opc >> 1)
    t, t2, n = _bits(insn, 4, 0), _bits(insn, 14, 10), _bits(insn, 9, 5)
    mode = _PAIR_MODES[mode_bits]
    offset = _sext(_bits(insn, 21, 15), 7) * size
    v1, v2 = regs.data(t, size, simd), regs.data(t2, size, simd)
    address, wb = _addressed(regs, n, offset, mode)
    second = (address + size) & MASK64
    accesses = (Access(VirtAddr(address), size, v1), Access(VirtAddr(second), size, v2))
    mnemonic = "stnp" if mode_bits == 0b00 else "stp"
    return StoreOp(StoreKind.PAIR, mnemonic, mode, accesses, wb, sources=(t, t2), simd=simd)


def _decode_exclusive(insn: int, regs: _Regs) -> StoreOp:
    """C6.2 STXR/STLXR/STXP/STLXP/STLR/STLLR; CAS/CASP refused (ldstexcl class)."""
    size_bits = _bits(insn, 31, 30)
    o2, load, o1, o0 = (bool(insn & (1 << b)) for b in (23, 22, 21, 15))
    s, t2, n, t = _bits(insn, 20, 16), _bits(insn, 14, 10), _bits(insn, 9, 5), _bits(insn, 4, 0)
    if o1 and o2:
        return _decode_cas(insn, regs)
    if o1 and size_bits < 2:
        raise UnsupportedInstruction(insn, UnsupportedReason.COMPARE_AND_SWAP, "CASP")
    if load:
        raise UnsupportedInstruction(insn, UnsupportedReason.NOT_A_STORE, "load exclusive/acquire")
    base = regs.base(n)
    suffix = _GPR_SUFFIX[size_bits]
    if o2:  # STLR / STLLR
        size = 1 << size_bits
        acc = Access(VirtAddr(base), size, regs.gpr(t, size))
        mnemonic = ("stlr" if o0 else "stllr") + suffix
        return StoreOp(StoreKind.RELEASE, mnemonic, AddrMode.BASE, (acc,), sources=(t,),
                       release=o0)
    lx = "stlx" if o0 else "stx"
    if o1:  # STXP / STLXP: one single-copy-atomic access of both registers
        half = 4 << (size_bits & 1)
        value = regs.gpr(t, half) | (regs.gpr(t2, half) << (8 * half))
        acc = Access(VirtAddr(base), 2 * half, value)
        return StoreOp(StoreKind.EXCLUSIVE_PAIR, lx + "p", AddrMode.BASE, (acc,), status_reg=s,
                       sources=(t, t2), release=o0)
    size = 1 << size_bits
    acc = Access(VirtAddr(base), size, regs.gpr(t, size))
    return StoreOp(StoreKind.EXCLUSIVE, lx + "r" + suffix, AddrMode.BASE, (acc,), status_reg=s,
                   sources=(t,), release=o0)


_LSE_OPS = {0b000: "add", 0b001: "clr", 0b010: "eor", 0b011: "set"}


def _decode_atomic(insn: int, regs: _Regs) -> StoreOp:
    """C6.2 SWP{A}{L}, LD<op>{A}{L} for ADD/CLR/EOR/SET (ST<op>: Rt = ZR), any size."""
    if insn & (1 << 26):
        raise UnsupportedInstruction(insn, UnsupportedReason.ATOMIC, "SIMD&FP")
    o3, opc = bool(insn & (1 << 15)), _bits(insn, 14, 12)
    if o3 and opc == 0b000:
        rmw, name = "swp", "swp"
    elif not o3 and opc in _LSE_OPS:
        rmw, name = _LSE_OPS[opc], "ld" + _LSE_OPS[opc]
    else:
        raise UnsupportedInstruction(insn, UnsupportedReason.ATOMIC, "min/max or unallocated")
    size_bits = _bits(insn, 31, 30)
    size, s, n, t = 1 << size_bits, _bits(insn, 20, 16), _bits(insn, 9, 5), _bits(insn, 4, 0)
    acquire, release = bool(insn & (1 << 23)), bool(insn & (1 << 22))
    mnemonic = name + ("a" if acquire else "") + ("l" if release else "") + _GPR_SUFFIX[size_bits]
    acc = Access(VirtAddr(regs.base(n)), size, regs.gpr(s, size))
    return StoreOp(StoreKind.ATOMIC, mnemonic, AddrMode.BASE, (acc,), sources=(s,),
                   release=release, rmw=rmw, result_reg=t)


def _decode_cas(insn: int, regs: _Regs) -> StoreOp:
    """C6.2 CAS{A}{L}{B,H}: compare Xs with memory, store Xt if equal; Xs := old."""
    size_bits = _bits(insn, 31, 30)
    if _bits(insn, 14, 10) != 0b11111:
        raise UnsupportedInstruction(insn, UnsupportedReason.UNALLOCATED, "CAS Rt2")
    size, s, n, t = 1 << size_bits, _bits(insn, 20, 16), _bits(insn, 9, 5), _bits(insn, 4, 0)
    acquire, release = bool(insn & (1 << 22)), bool(insn & (1 << 15))
    mnemonic = "cas" + ("a" if acquire else "") + ("l" if release else "") + _GPR_SUFFIX[size_bits]
    acc = Access(VirtAddr(regs.base(n)), size, regs.gpr(s, size))
    return StoreOp(StoreKind.ATOMIC, mnemonic, AddrMode.BASE, (acc,), sources=(s, t),
                   release=release, rmw="cas", result_reg=s, swap=regs.gpr(t, size))


def apply_rmw(op: StoreOp, old: int) -> int:
    """Memory's new value after the ATOMIC `op` found `old` there (same width)."""
    acc = op.accesses[0]
    mask = (1 << (8 * acc.size)) - 1
    v = acc.value
    if op.rmw == "swp":
        return v & mask
    if op.rmw == "add":
        return (old + v) & mask
    if op.rmw == "clr":
        return old & ~v & mask
    if op.rmw == "eor":
        return (old ^ v) & mask
    if op.rmw == "set":
        return (old | v) & mask
    if op.rmw == "cas":
        return op.swap & mask if old & mask == v & mask else old & mask
    raise ValueError(f"not an atomic store: {op.mnemonic}")


def _decode_stlur(insn: int, regs: _Regs) -> StoreOp:
    """C6.2 STLUR/STLURB/STLURH (FEAT_LRCPC2): store-release, signed imm9 unscaled."""
    if _bits(insn, 23, 22) != 0b00:
        raise UnsupportedInstruction(insn, UnsupportedReason.NOT_A_STORE, "LDAPUR")
    size_bits = _bits(insn, 31, 30)
    size, t, n = 1 << size_bits, _bits(insn, 4, 0), _bits(insn, 9, 5)
    address = (regs.base(n) + _sext(_bits(insn, 20, 12), 9)) & MASK64
    acc = Access(VirtAddr(address), size, regs.gpr(t, size))
    return StoreOp(StoreKind.RELEASE, "stlur" + _GPR_SUFFIX[size_bits], AddrMode.OFFSET, (acc,),
                   sources=(t,), release=True)


def _decode_dc_zva(insn: int, regs: _Regs, block: int) -> StoreOp:
    """C5.3 DC ZVA: zero the `block`-byte block (DCZID_EL0: 4 << BS) containing Xt."""
    t = _bits(insn, 4, 0)
    va = 0 if t == ZR else regs.read_reg(t) & MASK64
    acc = Access(VirtAddr(va & ~(block - 1)), block, 0)
    return StoreOp(StoreKind.ZERO_BLOCK, "dc zva", AddrMode.BASE, (acc,), sources=(t,))


DC_ZVA = 0xD50B7420
"""DC ZVA, X0 (Rt in bits 4:0)."""


def decode_store(
    insn: int,
    read_reg: RegReader,
    *,
    read_vreg: VRegReader | None = None,
    dczva_block: int = 64,
) -> StoreOp:
    """Decode the store `insn` against the current registers.

    Raises `UnsupportedInstruction` for anything that is not one of the stores in the module
    docstring (loads, atomics, CAS, structure stores, MTE, unallocated encodings, non-memory
    instructions), never any other exception for a 32-bit word.
    """
    if not 0 <= insn <= 0xFFFF_FFFF:
        raise ValueError(f"instruction word {insn:#x} is not 32-bit")
    if dczva_block < 4 or dczva_block & (dczva_block - 1):
        raise ValueError(f"DC ZVA block size {dczva_block} is not a power of two >= 4")
    regs = _Regs(read_reg, read_vreg, insn)
    if insn & 0xFFFF_FFE0 == DC_ZVA:
        return _decode_dc_zva(insn, regs, dczva_block)
    if insn & 0x3B00_0000 == 0x3900_0000:
        return _decode_unsigned_imm(insn, regs)
    if insn & 0x3B20_0000 == 0x3800_0000:
        return _decode_imm9(insn, regs)
    if insn & 0x3B20_0C00 == 0x3820_0800:
        return _decode_register_offset(insn, regs)
    if insn & 0x3B20_0C00 == 0x3820_0000:
        if insn & 0x0400_F000 == 0x0000_C000:  # o3=1, opc=100: LDAPR (FEAT_LRCPC)
            raise UnsupportedInstruction(insn, UnsupportedReason.NOT_A_STORE, "LDAPR")
        return _decode_atomic(insn, regs)
    if insn & 0x3A00_0000 == 0x2800_0000:
        return _decode_pair(insn, regs)
    if insn & 0x3F00_0000 == 0x0800_0000:
        return _decode_exclusive(insn, regs)
    if insn & 0x3F20_0C00 == 0x1900_0000:
        return _decode_stlur(insn, regs)
    if insn & 0xBE00_0000 == 0x0C00_0000:  # AdvSIMD load/store multiple / single structure(s)
        if insn & (1 << 22):
            raise UnsupportedInstruction(insn, UnsupportedReason.NOT_A_STORE, "structure load")
        raise UnsupportedInstruction(insn, UnsupportedReason.SIMD_STRUCTURE)
    if insn & 0xFF20_0000 == 0xD920_0000:
        raise UnsupportedInstruction(insn, UnsupportedReason.MEMORY_TAGGING, "STG/STZG/ST2G")
    if insn & 0x0A00_0000 == 0x0800_0000:
        raise UnsupportedInstruction(insn, UnsupportedReason.UNRECOGNIZED)
    raise UnsupportedInstruction(insn, UnsupportedReason.NOT_A_STORE, "not a load/store")
