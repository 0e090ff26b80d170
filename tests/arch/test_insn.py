"""Store decoder checked against the binutils assembler for every supported form."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secvma.arch.insn import (
    AddrMode,
    StoreKind,
    UnsupportedInstruction,
    UnsupportedReason,
    apply_rmw,
    decode_store,
)

Asm = Callable[[Sequence[str]], list[int]]
M64 = (1 << 64) - 1

GPR_SIZES = [("b", 1), ("h", 2), ("w", 4), ("x", 8)]
SIMD_SIZES = [("b", 1), ("h", 2), ("s", 4), ("d", 8), ("q", 16)]


@dataclass(frozen=True)
class Case:
    """One assembly line and what the decoder must say about it."""

    line: str
    mnemonic: str
    accesses: tuple[tuple[int, int, int], ...]
    writeback: tuple[int, int] | None = None
    status_reg: int | None = None


@dataclass(frozen=True)
class Machine:
    """A register file: x[0..30], x[31] = SP, v[0..31] (128-bit)."""

    x: tuple[int, ...]
    v: tuple[int, ...]

    def gpr(self, t: int, size: int) -> int:
        return 0 if t == 31 else self.x[t] & ((1 << (8 * size)) - 1)

    def vreg(self, t: int, size: int) -> int:
        return self.v[t] & ((1 << (8 * size)) - 1)


def rt_name(t: int, size: int) -> str:
    if t == 31:
        return "xzr" if size == 8 else "wzr"
    return f"x{t}" if size == 8 else f"w{t}"


def rn_name(n: int) -> str:
    return "sp" if n == 31 else f"x{n}"


regs = st.integers(0, 31)
bases = st.integers(0, 31)
imm9 = st.integers(-256, 255)


@st.composite
def single_gpr(draw: st.DrawFn, m: Machine) -> Case:
    sfx, size = draw(st.sampled_from(GPR_SIZES))
    form = draw(st.sampled_from(["uimm", "pre", "post", "stur", "sttr", "reg"]))
    n = draw(bases)
    t = draw(regs.filter(lambda t: t != n or form not in ("pre", "post") or n == 31))
    rt = rt_name(t, size)
    mn_sfx = sfx if size < 4 else ""
    base = m.x[n]
    value = m.gpr(t, size)
    scale = size.bit_length() - 1
    if form == "uimm":
        off = draw(st.integers(0, 4095)) * size
        return Case(f"str{mn_sfx} {rt}, [{rn_name(n)}, #{off}]", f"str{mn_sfx}",
                    (((base + off) & M64, size, value),))
    if form in ("pre", "post"):
        off = draw(imm9)
        if form == "pre":
            addr = (base + off) & M64
            line = f"str{mn_sfx} {rt}, [{rn_name(n)}, #{off}]!"
        else:
            addr = base
            line = f"str{mn_sfx} {rt}, [{rn_name(n)}], #{off}"
        return Case(line, f"str{mn_sfx}", ((addr, size, value),), (n, (base + off) & M64))
    if form in ("stur", "sttr"):
        off = draw(imm9)
        return Case(f"{form}{mn_sfx} {rt}, [{rn_name(n)}, #{off}]", f"{form}{mn_sfx}",
                    (((base + off) & M64, size, value),))
    mreg = draw(st.integers(0, 31))
    ext = draw(st.sampled_from(["lsl", "uxtw", "sxtw", "sxtx"]))
    shifted = draw(st.booleans())
    xm = 0 if mreg == 31 else m.x[mreg]
    if ext == "uxtw":
        idx = xm & 0xFFFF_FFFF
    elif ext == "sxtw":
        idx = (xm & 0xFFFF_FFFF) - ((xm & 0x8000_0000) << 1)
    else:
        idx = xm
    mname = rt_name(mreg, 4 if ext in ("uxtw", "sxtw") else 8)
    amount = scale if shifted else 0
    suffix = f", {ext} #{scale}" if shifted else ("" if ext == "lsl" else f", {ext}")
    line = f"str{mn_sfx} {rt}, [{rn_name(n)}, {mname}{suffix}]"
    return Case(line, f"str{mn_sfx}", (((base + (idx << amount)) & M64, size, value),))


@st.composite
def single_simd(draw: st.DrawFn, m: Machine) -> Case:
    sfx, size = draw(st.sampled_from(SIMD_SIZES))
    form = draw(st.sampled_from(["uimm", "pre", "post", "stur"]))
    n, t = draw(bases), draw(regs)
    base, value = m.x[n], m.vreg(t, size)
    reg = f"{sfx}{t}"
    if form == "uimm":
        off = draw(st.integers(0, 4095)) * size
        return Case(f"str {reg}, [{rn_name(n)}, #{off}]", "str",
                    (((base + off) & M64, size, value),))
    off = draw(imm9)
    if form == "stur":
        return Case(f"stur {reg}, [{rn_name(n)}, #{off}]", "stur",
                    (((base + off) & M64, size, value),))
    if form == "pre":
        return Case(f"str {reg}, [{rn_name(n)}, #{off}]!", "str",
                    (((base + off) & M64, size, value),), (n, (base + off) & M64))
    return Case(f"str {reg}, [{rn_name(n)}], #{off}", "str", ((base, size, value),),
                (n, (base + off) & M64))


@st.composite
def pair(draw: st.DrawFn, m: Machine) -> Case:
    simd = draw(st.booleans())
    if simd:
        sfx, size = draw(st.sampled_from([("s", 4), ("d", 8), ("q", 16)]))
    else:
        sfx, size = draw(st.sampled_from([("w", 4), ("x", 8)]))
    form = draw(st.sampled_from(["off", "pre", "post", "stnp"]))
    n = draw(bases)
    wb = form in ("pre", "post")
    t = draw(regs.filter(lambda r: simd or not wb or r != n or n == 31))
    t2 = draw(regs.filter(lambda r: simd or not wb or r != n or n == 31))
    if simd:
        r1, r2, v1, v2 = f"{sfx}{t}", f"{sfx}{t2}", m.vreg(t, size), m.vreg(t2, size)
    else:
        r1, r2, v1, v2 = rt_name(t, size), rt_name(t2, size), m.gpr(t, size), m.gpr(t2, size)
    off = draw(st.integers(-64, 63)) * size
    base = m.x[n]
    mn = "stnp" if form == "stnp" else "stp"
    addr = base if form == "post" else (base + off) & M64
    accesses = ((addr, size, v1), ((addr + size) & M64, size, v2))
    wbv = (n, (base + off) & M64) if wb else None
    rn = rn_name(n)
    line = {
        "off": f"stp {r1}, {r2}, [{rn}, #{off}]",
        "stnp": f"stnp {r1}, {r2}, [{rn}, #{off}]",
        "pre": f"stp {r1}, {r2}, [{rn}, #{off}]!",
        "post": f"stp {r1}, {r2}, [{rn}], #{off}",
    }[form]
    return Case(line, mn, accesses, wbv)


@st.composite
def exclusive(draw: st.DrawFn, m: Machine) -> Case:
    form = draw(st.sampled_from(["stxr", "stlxr", "stxp", "stlxp", "stlr", "stllr", "stlur",
                                 "dczva"]))
    n = draw(bases)
    base = m.x[n]
    rn = rn_name(n)
    if form == "dczva":
        t = draw(regs)
        va = 0 if t == 31 else m.x[t]
        return Case(f"dc zva, {rt_name(t, 8)}", "dc zva", ((va & ~63 & M64, 64, 0),))
    if form in ("stxp", "stlxp"):
        sfx, half = draw(st.sampled_from([("w", 4), ("x", 8)]))
        t, t2 = draw(regs), draw(regs)
        s = draw(st.integers(0, 30).filter(lambda s: s not in (t, t2, n)))
        value = m.gpr(t, half) | (m.gpr(t2, half) << (8 * half))
        return Case(f"{form} w{s}, {rt_name(t, half)}, {rt_name(t2, half)}, [{rn}]", form,
                    ((base, 2 * half, value),), None, s)
    sfx, size = draw(st.sampled_from(GPR_SIZES))
    mn = form + (sfx if size < 4 else "")
    t = draw(regs)
    rt = rt_name(t, size)
    if form in ("stxr", "stlxr"):
        mn = form + (sfx if size < 4 else "")
        s = draw(st.integers(0, 30).filter(lambda s: s not in (t, n)))
        return Case(f"{mn} w{s}, {rt}, [{rn}]", mn, ((base, size, m.gpr(t, size)),), None, s)
    if form == "stlur":
        off = draw(imm9)
        return Case(f"{mn} {rt}, [{rn}, #{off}]", mn,
                    (((base + off) & M64, size, m.gpr(t, size)),))
    return Case(f"{mn} {rt}, [{rn}]", mn, ((base, size, m.gpr(t, size)),))


machines = st.builds(
    Machine,
    st.lists(st.integers(0, M64), min_size=32, max_size=32).map(tuple),
    st.lists(st.integers(0, (1 << 128) - 1), min_size=32, max_size=32).map(tuple),
)


def check_batch(asm: Asm, m: Machine, cases: list[Case]) -> None:
    words = asm([c.line for c in cases])
    for case, word in zip(cases, words, strict=True):
        op = decode_store(word, lambda n: m.x[n], read_vreg=lambda n: m.v[n])
        got = tuple((a.address, a.size, a.value) for a in op.accesses)
        wb = (op.writeback.reg, op.writeback.value) if op.writeback else None
        assert (op.mnemonic, got, wb, op.status_reg) == (
            case.mnemonic, case.accesses, case.writeback, case.status_reg), case.line


_SETTINGS = settings(max_examples=15, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_SETTINGS
@given(st.data(), machines)
def test_str_family_matches_assembler(asm: Asm, data: st.DataObject, m: Machine) -> None:
    """STR/STRB/STRH unsigned, pre, post, register (all extends), STUR*, STTR* decode right."""
    cases = data.draw(st.lists(single_gpr(m), min_size=60, max_size=60))
    check_batch(asm, m, cases)


@_SETTINGS
@given(st.data(), machines)
def test_simd_str_matches_assembler(asm: Asm, data: st.DataObject, m: Machine) -> None:
    """STR/STUR of B/H/S/D/Q registers decode with the value from read_vreg."""
    cases = data.draw(st.lists(single_simd(m), min_size=40, max_size=40))
    check_batch(asm, m, cases)


@_SETTINGS
@given(st.data(), machines)
def test_pair_matches_assembler(asm: Asm, data: st.DataObject, m: Machine) -> None:
    """STP/STNP (W, X, S, D, Q) with signed offset, pre- and post-index decode right."""
    cases = data.draw(st.lists(pair(m), min_size=40, max_size=40))
    check_batch(asm, m, cases)


@_SETTINGS
@given(st.data(), machines)
def test_exclusive_release_zva_matches_assembler(asm: Asm, data: st.DataObject,
                                                 m: Machine) -> None:
    """STXR/STLXR/STXP/STLXP/STLR/STLLR/STLUR (all widths) and DC ZVA decode right."""
    cases = data.draw(st.lists(exclusive(m), min_size=40, max_size=40))
    check_batch(asm, m, cases)


def _no_reg(n: int) -> int:
    raise AssertionError(f"register {n} must not be read")


@pytest.mark.parametrize(
    ("line", "reason"),
    [("ldr x0, [x1]", UnsupportedReason.NOT_A_STORE),
     ("ldp x0, x1, [x2]", UnsupportedReason.NOT_A_STORE),
     ("ldxr x0, [x1]", UnsupportedReason.NOT_A_STORE),
     ("ldar w0, [x1]", UnsupportedReason.NOT_A_STORE),
     ("ldapr x0, [x1]", UnsupportedReason.NOT_A_STORE),
     ("ldapur x0, [x1, #3]", UnsupportedReason.NOT_A_STORE),
     ("prfm pldl1keep, [x0]", UnsupportedReason.NOT_A_STORE),
     ("ldr q0, [x1]", UnsupportedReason.NOT_A_STORE),
     ("nop", UnsupportedReason.NOT_A_STORE),
     ("msr ttbr1_el1, x0", UnsupportedReason.NOT_A_STORE),
     ("dc civac, x0", UnsupportedReason.NOT_A_STORE),
     ("ldsmax x0, x1, [x2]", UnsupportedReason.ATOMIC),
     ("ldumin w0, w1, [x2]", UnsupportedReason.ATOMIC),
     ("casp x0, x1, x2, x3, [x4]", UnsupportedReason.COMPARE_AND_SWAP),
     ("st1 {v0.16b}, [x0]", UnsupportedReason.SIMD_STRUCTURE),
     ("st2 {v0.4s, v1.4s}, [x0], #32", UnsupportedReason.SIMD_STRUCTURE),
     ("st1 {v0.s}[1], [x0]", UnsupportedReason.SIMD_STRUCTURE),
     ("ld1 {v0.16b}, [x0]", UnsupportedReason.NOT_A_STORE),
     ("stg x0, [x1]", UnsupportedReason.MEMORY_TAGGING),
     ("stgp x0, x1, [x2]", UnsupportedReason.MEMORY_TAGGING)])
def test_non_stores_raise_typed_error(asm: Asm, line: str, reason: UnsupportedReason) -> None:
    """Loads, atomics, CAS, structure and MTE stores raise UnsupportedInstruction(reason)."""
    (word,) = asm([line])
    with pytest.raises(UnsupportedInstruction) as info:
        decode_store(word, _no_reg, read_vreg=_no_reg)
    assert info.value.reason is reason
    assert info.value.insn == word


@pytest.mark.parametrize(
    ("line", "mnemonic", "rmw", "size", "result", "old", "new"),
    [("swp x3, x4, [x5]", "swp", "swp", 8, 4, 0x1111, 0xAAAA_0000_0000_0003),
     ("swpal w3, w4, [x5]", "swpal", "swp", 4, 4, 0x1111, 0x0000_0003),
     ("ldclr x3, x4, [x5]", "ldclr", "clr", 8, 4, 0xFFFF, 0xFFFC),
     ("stset x3, [x5]", "ldset", "set", 8, 31, 0xF0, 0xAAAA_0000_0000_00F3),
     ("ldeorl x3, x4, [x5]", "ldeorl", "eor", 8, 4, 0x6, 0xAAAA_0000_0000_0005),
     ("ldadda x3, x4, [x5]", "ldadda", "add", 8, 4, (1 << 64) - 1, 0xAAAA_0000_0000_0002),
     ("cas x3, x4, [x5]", "cas", "cas", 8, 3, 0xAAAA_0000_0000_0003, 0x4444),
     ("casal x3, x4, [x5]", "casal", "cas", 8, 3, 0x1, 0x1)])
def test_lse_atomics_decode_as_read_modify_write(asm: Asm, line: str, mnemonic: str, rmw: str,
                                                 size: int, result: int, old: int,
                                                 new: int) -> None:
    """FEAT_LSE SWP / LD<op> / ST<op> / CAS (what Debian's kernel uses on -cpu max to clear a
    kernel PTE: `ptep_get_and_clear` is a SWP) decode to one access at [Xn] with the operation,
    the register that gets the old value, and `apply_rmw` computes memory's new value."""
    regs = {3: 0xAAAA_0000_0000_0003, 4: 0x4444, 5: 0x8000_1000}
    (word,) = asm([line])
    op = decode_store(word, lambda n: regs[n])
    assert op.kind is StoreKind.ATOMIC and op.mnemonic == mnemonic and op.rmw == rmw
    assert op.result_reg == result
    assert [(a.address, a.size) for a in op.accesses] == [(0x8000_1000, size)]
    assert apply_rmw(op, old) == new


def test_simd_without_callback_is_unsupported(asm: Asm) -> None:
    """STR Qn without a read_vreg callback raises SIMD_WITHOUT_CALLBACK."""
    (word,) = asm(["str q3, [x1, #16]"])
    with pytest.raises(UnsupportedInstruction) as info:
        decode_store(word, lambda n: 0x1000)
    assert info.value.reason is UnsupportedReason.SIMD_WITHOUT_CALLBACK


@given(st.integers(0, (1 << 32) - 1))
@settings(max_examples=3000)
def test_any_word_decodes_or_raises_typed(word: int) -> None:
    """Every 32-bit word either decodes or raises UnsupportedInstruction, nothing else."""
    try:
        op = decode_store(word, lambda n: 0x8000_0000 + n, read_vreg=lambda n: n)
    except UnsupportedInstruction:
        return
    assert op.accesses and all(0 <= a.address <= M64 for a in op.accesses)


def test_kernel_set_pte_store_example() -> None:
    """Linux set_pte's `str x1, [x0]` (0xf9000001): one 8-byte access of x1 at x0."""
    x = {0: 0xFFFF_0000_1234_5008, 1: 0x0060_0000_4123_4F43}
    op = decode_store(0xF9000001, lambda n: x[n])
    assert op.kind is StoreKind.PLAIN and op.mode is AddrMode.OFFSET
    assert op.address == x[0] and op.size == 8 and op.accesses[0].value == x[1]
    assert op.accesses[0].data == x[1].to_bytes(8, "little") and op.writeback is None


def test_dc_zva_block_size_parameter() -> None:
    """DC ZVA uses the block size given (DCZID_EL0), aligned down."""
    op = decode_store(0xD50B7420 | 2, lambda n: 0x4000_1234, dczva_block=256)
    assert op.accesses[0].address == 0x4000_1200 and op.size == 256
    assert op.accesses[0].data == bytes(256)
