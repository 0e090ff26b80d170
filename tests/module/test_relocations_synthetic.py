"""Relocation types Debian never emits, on objects assembled at test time, against GNU ld."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from secvma.module.config import LINUX_6_1, LoaderConfig
from secvma.module.elf import ElfModule, ShFlags
from secvma.module.errors import (
    PltExhausted,
    RelocationError,
    RelocationOverflow,
    UnsupportedRelocation,
)
from secvma.module.ldcheck import LOADER_OWNED, OracleLayout, ld_link, oracle_layout
from secvma.module.link import Relocated, relocate_sections
from secvma.module.load import prepare
from secvma.module.relocations import RECIPES, R, relocate_one
from secvma.module.symbols import Export, ExportKind, ExportTable, resolve_symbols

Asm = Callable[[str], bytes]
pytestmark = pytest.mark.usefixtures("engine")
BASE = 0xFFFF800008000000

# Every type outside Debian's set (docs/debian-modules.md §5), with values in range for both the
# kernel's and ld's overflow rules.
ALL_TYPES_SRC = """
    .section .text,"ax",%progbits
    .globl func
func:
    movz x0, #:abs_g0:small16
    movk x0, #:abs_g0_nc:far
    movz x0, #:abs_g1:small32
    movk x0, #:abs_g1_nc:far
    movz x0, #:abs_g2:small48
    movk x0, #:abs_g2_nc:far
    movk x0, #:abs_g3:far
    movz x0, #:abs_g0_s:neg16
    movz x0, #:abs_g0_s:small16
    movz x0, #:abs_g1_s:neg32
    movz x0, #:abs_g2_s:neg48
    movz x0, #:prel_g0:near
    movk x0, #:prel_g0_nc:far
    movz x0, #:prel_g1:mid
    movk x0, #:prel_g1_nc:far
    movz x0, #:prel_g2:far
    movk x0, #:prel_g2_nc:far
    movz x0, #:prel_g3:far
    ldr x1, near
    adr x2, near
    adrp x3, :pg_hi21_nc:far
    adrp x3, far
    add x3, x3, #:lo12:far
    ldrb w4, [x3, #:lo12:far]
    ldrh w4, [x3, #:lo12:far2]
    ldr w4, [x3, #:lo12:far4]
    ldr x4, [x3, #:lo12:far8]
    ldr q0, [x3, #:lo12:far16]
    tbz x0, #3, near_code
    tbnz w0, #1, near_code
    b.eq near_code
    cbz x0, near_code
    b mid
    bl mid
    ret
    .section .rodata,"a",%progbits
    .hword small16
    .hword near - .
    .word small32
    .word mid - .
    .xword far
    .xword far - .
"""

SYMS = {
    "small16": 0x1234, "small32": 0x89ABCDEF, "small48": 0x123456789ABC,
    "neg16": (-0x1234) & (2**64 - 1), "neg32": (-0x12345678) & (2**64 - 1),
    "neg48": (-0x123456789ABC) & (2**64 - 1),
    "far": 0xFFFF80001234567C, "far2": 0xFFFF800012345676, "far4": 0xFFFF800012345674,
    "far8": 0xFFFF800012345678, "far16": 0xFFFF800012345670,
    "near": BASE + 0x2008, "near_code": BASE + 0x1F0, "mid": BASE + 0x100000,
}


def _link(elf: ElfModule, lay: OracleLayout, cfg: LoaderConfig = LINUX_6_1) -> Relocated:
    view = prepare(elf, cfg)
    exports = ExportTable(Export(n, a, ExportKind.PLAIN, "test") for n, a in lay.symbols.items())
    res = resolve_symbols(elf, lay.sections, exports, check_crcs=False)
    addrs = {i: a for i, a in lay.sections.items() if view.sections[i].flags & ShFlags.ALLOC}
    return relocate_sections(view, addrs, res.values)


def _ld_compare(elf: ElfModule, lay: OracleLayout, ld: str) -> int:
    ours = _link(elf, lay)
    theirs = ld_link(elf, lay, ld=ld)
    n = 0
    for idx, buf in ours.contents.items():
        name = elf.sections[idx].name
        if name in LOADER_OWNED or name not in theirs.sections:
            continue
        assert bytes(buf) == theirs.sections[name][1], f"{name} differs from GNU ld"
        n += 1
    return n


def test_every_linux_relocation_type_matches_gnu_ld(assemble: Asm, skeleton: str,
                                                    binutils: dict[str, str]) -> None:
    """MOVW, LO19, LO21, CONDBR19, TSTBR14, ABS16/PREL16, _NC ADRP and LDST128 equal ld's bytes."""
    elf = ElfModule(assemble(ALL_TYPES_SRC + skeleton))
    lay = oracle_layout(elf, base=BASE)
    lay = OracleLayout(lay.sections, {n: SYMS[n] for n in lay.symbols})
    seen = {r[1] & 0xFFFFFFFF for rs in elf.rela_sections() for r in elf.relocations(rs.index)}
    debian = {R.ABS64, R.ABS32, R.PREL64, R.PREL32, R.CALL26, R.JUMP26, R.ADR_PREL_PG_HI21,
              R.ADD_ABS_LO12_NC, R.LDST8_ABS_LO12_NC, R.LDST16_ABS_LO12_NC,
              R.LDST32_ABS_LO12_NC, R.LDST64_ABS_LO12_NC, R.LDST128_ABS_LO12_NC}
    missing = {r for r in RECIPES if r not in (R.NONE, R.ARM_NONE)} - seen
    assert not missing, f"synthetic object lacks {sorted(R(m).name for m in missing)}"
    assert len(seen - debian) >= 20
    assert _ld_compare(elf, lay, binutils["ld"]) >= 2


@pytest.mark.parametrize(("rtype", "insn", "value", "place"), [
    (R.ABS16, 0, 0x10000, BASE),
    (R.ABS32, 0, 1 << 32, BASE),
    (R.ABS32, 0, BASE, BASE),  # kernel addresses do not fit the unsigned 32-bit range
    (R.PREL16, 0, BASE + 0x8000, BASE),
    (R.PREL32, 0, BASE + (1 << 31), BASE),
    (R.MOVW_UABS_G0, 0xD2800000, 0x10000, BASE),
    (R.MOVW_UABS_G1, 0xD2A00000, 1 << 32, BASE),
    (R.MOVW_SABS_G0, 0xD2800000, 0x10000, BASE),
    (R.MOVW_PREL_G1, 0xD2A00000, BASE + (1 << 32), BASE),
    (R.LD_PREL_LO19, 0x58000000, BASE + (1 << 20), BASE),
    (R.ADR_PREL_LO21, 0x10000000, BASE + (1 << 20), BASE),
    (R.ADR_PREL_PG_HI21, 0x90000000, BASE + (1 << 32), BASE),
    (R.TSTBR14, 0x36000000, BASE + (1 << 15), BASE),
    (R.CONDBR19, 0x54000000, BASE - (1 << 20) - 4, BASE),
])
def test_checked_types_refuse_values_that_do_not_fit(rtype: R, insn: int, value: int,
                                                     place: int) -> None:
    """Each overflow-checked type raises RelocationOverflow just outside its range."""
    buf = bytearray(struct.pack("<Q", insn))
    with pytest.raises(RelocationOverflow, match=rtype.name):
        relocate_one(rtype, buf, 0, place, value)


@pytest.mark.parametrize("rtype", [R.ABS64, R.PREL64, R.MOVW_UABS_G0_NC, R.MOVW_UABS_G3,
                                   R.MOVW_PREL_G3, R.ADR_PREL_PG_HI21_NC, R.ADD_ABS_LO12_NC,
                                   R.LDST64_ABS_LO12_NC])
def test_unchecked_types_never_overflow(rtype: R) -> None:
    """_NC, 64-bit data and G3 relocations are written without a range check (Linux rules)."""
    buf = bytearray(8)
    relocate_one(rtype, buf, 0, BASE, BASE + (1 << 40) + 0x123)


def test_signed_movw_switches_between_movz_and_movn() -> None:
    """SABS_G0 writes MOVZ for a non-negative value and MOVN with ~value for a negative one."""
    buf = bytearray(struct.pack("<I", 0xF2800000))  # movk x0 (opcode is rewritten)
    relocate_one(R.MOVW_SABS_G0, buf, 0, 0, 0x1234)
    assert struct.unpack("<I", buf)[0] == 0xD2800000 | (0x1234 << 5)
    relocate_one(R.MOVW_SABS_G0, buf, 0, 0, (-0x1234) & (2**64 - 1))
    assert struct.unpack("<I", buf)[0] == 0x92800000 | (0x1233 << 5)


def test_unknown_relocation_type_is_refused() -> None:
    """A type outside the arm64 loader's switch aborts with UnsupportedRelocation."""
    with pytest.raises(UnsupportedRelocation, match="type 281"):
        relocate_one(281, bytearray(8), 0, 0, 0)


def test_relocation_outside_its_section_is_refused() -> None:
    """A place whose field would extend past the section end is refused before writing."""
    with pytest.raises(RelocationError, match="outside"):
        relocate_one(R.ABS64, bytearray(4), 0, 0, 0)


BRANCH_SRC = """
    .section .text,"ax",%progbits
    .globl caller
caller:
    bl far_a
    bl far_a
    b far_b
    bl far_a + 8
    bl local_fn
local_fn:
    ret
    .section .init.text,"ax",%progbits
    bl far_a
"""


def _decode_plt(buf: bytes, slot_addr: int, off: int) -> int:
    adrp, add, br = struct.unpack_from("<III", buf, off)
    assert adrp & 0x9F00001F == 0x90000010 and br == 0xD61F0200
    imm = ((adrp >> 29) & 3) | (((adrp >> 5) & 0x7FFFF) << 2)
    imm -= (1 << 21) if imm >> 20 else 0
    return int(((slot_addr & ~0xFFF) + (imm << 12)) + ((add >> 10) & 0xFFF))


def test_far_branches_go_through_deduplicated_plt_entries(assemble: Asm, skeleton: str) -> None:
    """CALL26/JUMP26 beyond ±128 MiB land on a .plt entry whose ADRP/ADD/BR reaches S+A."""
    elf = ElfModule(assemble(BRANCH_SRC + skeleton))
    lay = oracle_layout(elf, base=BASE)
    far = {"far_a": BASE + (1 << 30), "far_b": BASE - (1 << 29)}
    lay = OracleLayout(lay.sections, far)
    out = _link(elf, lay)
    text = elf.section_by_name(".text")
    assert text is not None
    core = out.plts["core"]
    assert core.num_entries == 3  # far_a (shared by the two calls), far_a+8, far_b
    code = out.contents[text.index]
    for k, target in enumerate([far["far_a"], far["far_a"], far["far_b"], far["far_a"] + 8]):
        place = lay.sections[text.index] + 4 * k
        insn = struct.unpack_from("<I", code, 4 * k)[0]
        imm = insn & 0x3FFFFFF
        dest = place + ((imm - (1 << 26) if imm >> 25 else imm) << 2)
        slot = dest - core.addr
        assert slot % 12 == 0 and 0 <= slot < len(core.buf)
        assert _decode_plt(bytes(core.buf), dest, slot) == target
    assert out.plts["init"].num_entries == 1


def test_far_branch_without_module_plts_overflows(assemble: Asm, skeleton: str) -> None:
    """Without CONFIG_ARM64_MODULE_PLTS an out-of-range CALL26 fails the load."""
    elf = ElfModule(assemble(BRANCH_SRC + skeleton))
    lay = oracle_layout(elf, base=BASE)
    lay = OracleLayout(lay.sections, {"far_a": BASE + (1 << 30), "far_b": BASE})
    cfg = LoaderConfig(module_plts=False)
    with pytest.raises(RelocationOverflow, match="CALL26"):
        _link(elf, lay, cfg)


def test_plt_sized_without_kaslr_cannot_take_far_branches(assemble: Asm, skeleton: str) -> None:
    """With RANDOMIZE_BASE off no PLT slot is counted, so a far branch exhausts the PLT."""
    elf = ElfModule(assemble(BRANCH_SRC + skeleton))
    lay = oracle_layout(elf, base=BASE)
    lay = OracleLayout(lay.sections, {"far_a": BASE + (1 << 30), "far_b": BASE})
    with pytest.raises(PltExhausted):
        _link(elf, lay, LoaderConfig(randomize_base=False))


ADRP_SRC = """
    .section .text,"ax",%progbits
    .balign 4096
    .space 0xff8
    adrp x5, target
    adrp x6, faraway
    nop
"""


def test_erratum_843419_turns_vulnerable_adrp_into_adr_or_veneer(assemble: Asm,
                                                                  skeleton: str) -> None:
    """An ADRP at page offset 0xff8 becomes ADR when in range, else B to an ADRP/ADD/B veneer."""
    elf = ElfModule(assemble(ADRP_SRC + skeleton))
    cfg = LoaderConfig(erratum_843419=True)
    view = prepare(elf, cfg)
    text = elf.section_by_name(".text")
    assert text is not None and view.core_plts >= 1  # the 0xffc ADRP needs a veneer slot
    base = BASE
    lay = oracle_layout(elf, base=base)
    assert lay.sections[text.index] % 4096 == 0
    syms = {"target": base + 0x5123, "faraway": base + (1 << 31)}
    out = _link(elf, OracleLayout(lay.sections, syms), cfg)
    code = out.contents[text.index]
    adr, br = struct.unpack_from("<II", code, 0xFF8)
    assert adr & 0x9F00001F == 0x10000005  # ADR x5
    imm = ((adr >> 29) & 3) | (((adr >> 5) & 0x7FFFF) << 2)
    assert lay.sections[text.index] + 0xFF8 + imm == syms["target"] & ~0xFFF
    assert br & 0xFC000000 == 0x14000000  # B veneer
    place = lay.sections[text.index] + 0xFFC
    veneer = place + ((br & 0x3FFFFFF) << 2)
    core = out.plts["core"]
    v_adrp, v_add, v_b = struct.unpack_from("<III", core.buf, veneer - core.addr)
    assert v_adrp & 0x9F00001F == 0x90000006 and v_add & 0x1F == 6
    back = veneer + 8 + (((v_b & 0x3FFFFFF) ^ 0x2000000) - 0x2000000) * 4
    assert back == place + 4
