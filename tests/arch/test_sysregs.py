"""System-register encodings checked against the binutils assembler."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secvma.arch import sysregs as s

Asm = Callable[[Sequence[str]], list[int]]

# Registers binutils only accepts in one direction, or spells differently.
_WRITE_ONLY = {"OSLAR_EL1", "PMSWINC_EL0", "ICC_EOIR1_EL1", "ICC_DIR_EL1", "ICC_SGI1R_EL1"}
_SPELLING = {"SPSEL": "spsel", "CURRENTEL": "currentel"}


def test_table_matches_assembler(asm: Asm) -> None:
    """Every named register assembles (MRS, or MSR when write-only) to the table's encoding."""
    names = sorted(s.SYSREGS)
    lines = [
        f"msr {_SPELLING.get(n, n.lower())}, x5" if n in _WRITE_ONLY
        else f"mrs x5, {_SPELLING.get(n, n.lower())}"
        for n in names
    ]
    words = asm(lines)
    for name, word in zip(names, words, strict=True):
        move = s.decode_msr_mrs(word)
        assert move is not None, name
        assert move.enc == s.SYSREGS[name], f"{name}: table {s.SYSREGS[name]} as {move.enc}"
        assert move.rt == 5 and move.is_read is (name not in _WRITE_ONLY)


def test_required_registers_present() -> None:
    """The registers the hypervisor traps or programs are all named."""
    for name in ["SCTLR_EL1", "TTBR0_EL1", "TTBR1_EL1", "TCR_EL1", "MAIR_EL1", "AMAIR_EL1",
                 "CONTEXTIDR_EL1", "VBAR_EL1", "ESR_EL1", "FAR_EL1", "AFSR0_EL1", "AFSR1_EL1",
                 "ELR_EL1", "SPSR_EL1", "PAR_EL1", "TPIDR_EL1", "TPIDR_EL0", "TPIDRRO_EL0",
                 "CNTKCTL_EL1", "CNTV_CTL_EL0", "MDSCR_EL1", "HCR_EL2", "VTCR_EL2",
                 "VTTBR_EL2", "HPFAR_EL2", "ESR_EL2", "ELR_EL2", "SPSR_EL2"]:
        assert name in s.SYSREGS


@given(st.integers(2, 3), st.integers(0, 7), st.integers(0, 15), st.integers(0, 15),
       st.integers(0, 7), st.integers(0, 31), st.booleans())
def test_msr_mrs_roundtrip(op0: int, op1: int, crn: int, crm: int, op2: int, rt: int,
                           read: bool) -> None:
    """encode_mrs/encode_msr then decode_msr_mrs gives back the encoding, Rt and direction."""
    enc = s.SysRegEncoding(op0, op1, crn, crm, op2)
    word = s.encode_mrs(enc, rt) if read else s.encode_msr(enc, rt)
    assert s.decode_msr_mrs(word) == s.SysRegMove(enc, rt, read)


def test_encode_matches_assembler(asm: Asm) -> None:
    """encode_mrs/encode_msr produce the assembler's words for generic register names."""
    enc = s.SysRegEncoding(3, 5, 10, 2, 0)
    words = asm([f"mrs x3, {enc}", f"msr {enc}, x30"])
    assert words == [s.encode_mrs(enc, 3), s.encode_msr(enc, 30)]


def test_generic_names_and_lookup() -> None:
    """Generic S<op0>_.. names parse, and unnamed encodings render generically."""
    assert s.encoding_of("s3_0_c1_c0_0") == s.SYSREGS["SCTLR_EL1"]
    assert s.encoding_of("tcr_el1") == s.SysRegEncoding(3, 0, 2, 0, 2)
    assert s.name_of((3, 0, 2, 0, 2)) == "TCR_EL1"
    assert s.name_of((3, 7, 15, 15, 7)) == "S3_7_C15_C15_7"
    with pytest.raises(s.UnknownSysReg):
        s.encoding_of("NOT_A_REG")
    with pytest.raises(s.UnknownSysReg):
        s.encoding_of("S3_0_C16_C0_0")


def test_decode_rejects_other_instructions() -> None:
    """A non-MSR/MRS word (a NOP, an MSR immediate) decodes to None."""
    assert s.decode_msr_mrs(0xD503201F) is None  # nop
    assert s.decode_msr_mrs(0xD50040BF) is None  # msr pan, #0 (MSR immediate)
