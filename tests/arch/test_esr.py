"""ESR decode of known syndromes and encode/decode round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secvma.arch import esr as e
from secvma.arch.sysregs import SYSREGS


def test_decode_smp_bug_syndrome() -> None:
    """0x93810005: lower-EL data abort, ISV, 32-bit access via w1, level-1 translation fault."""
    s = e.decode_esr(0x93810005)
    assert isinstance(s, e.DataAbort)
    assert s.lower_el and s.il and s.isv and s.access_size == 4 and s.srt == 1
    assert not s.sf and not s.sse and not s.wnr and not s.s1ptw
    assert s.fault == e.FaultStatus(e.FaultKind.TRANSLATION, 1, 0x05)


def test_decode_same_el_write_no_isv() -> None:
    """0x96000045: same-EL data abort, no ISV, write, level-1 translation fault."""
    s = e.decode_esr(0x96000045)
    assert isinstance(s, e.DataAbort)
    assert not s.lower_el and not s.isv and s.access_size is None and s.wnr
    assert s.fault.kind is e.FaultKind.TRANSLATION and s.fault.level == 1


def test_decode_stage2_permission_store_x() -> None:
    """0x93C0804F: 64-bit STR of x0, permission fault level 3 (a write-protected PTE page)."""
    s = e.decode_esr(0x93C0804F)
    assert isinstance(s, e.DataAbort)
    assert s.isv and s.access_size == 8 and s.srt == 0 and s.sf and s.wnr
    assert s.fault == e.FaultStatus(e.FaultKind.PERMISSION, 3, 0x0F)


def test_decode_s1ptw_fault() -> None:
    """0x92000087: lower-EL data abort on a stage-1 walk (S1PTW), translation level 3."""
    s = e.decode_esr(0x92000087)
    assert isinstance(s, e.DataAbort) and s.s1ptw and s.il and not s.wnr
    assert s.fault.kind is e.FaultKind.TRANSLATION and s.fault.level == 3


def test_decode_instruction_abort() -> None:
    """0x8200000E: lower-EL instruction abort, permission fault level 2."""
    s = e.decode_esr(0x8200000E)
    assert isinstance(s, e.InstructionAbort) and s.lower_el
    assert s.fault == e.FaultStatus(e.FaultKind.PERMISSION, 2, 0x0E)


def test_decode_msr_ttbr1_trap() -> None:
    """MSR TTBR1_EL1, x1 trapped by TVM decodes to TTBR1_EL1, write, rt 1."""
    iss = (3 << 20) | (1 << 17) | (0 << 14) | (2 << 10) | (1 << 5) | (0 << 1) | 0
    s = e.decode_esr((0x18 << 26) | (1 << 25) | iss)
    assert isinstance(s, e.SysRegAccess)
    assert s.name == "TTBR1_EL1" and s.rt == 1 and s.is_write


def test_decode_mrs_trap() -> None:
    """A trapped MRS x7, SCTLR_EL1 (TRVM) is a read of SCTLR_EL1 into x7."""
    acc = e.SysRegAccess(il=True, enc=SYSREGS["SCTLR_EL1"], rt=7, is_read=True)
    s = e.decode_esr(acc.encode())
    assert s == acc and s.name == "SCTLR_EL1"


def test_decode_hvc_smc() -> None:
    """HVC #0x1e and SMC #0 from AArch64 decode their imm16."""
    s = e.decode_esr(0x5A00001E)
    assert s == e.ImmediateCall(e.EC.HVC64, True, 0x1E)
    s = e.decode_esr(0x5E000000)
    assert s == e.ImmediateCall(e.EC.SMC64, True, 0)


def test_decode_wfi_and_other() -> None:
    """WFE traps carry TI=1; a BRK syndrome falls back to OtherSyndrome; reserved ECs stay raw."""
    w = e.decode_esr(0x06000001)
    assert isinstance(w, e.WaitTrap) and w.is_wfe
    o = e.decode_esr(0xF2000123)
    assert o == e.OtherSyndrome(e.EC.BRK64, True, 0x123)
    r = e.decode_esr(0x3F << 26)
    assert isinstance(r, e.OtherSyndrome) and r.ec == 0x3F


@pytest.mark.parametrize(
    ("fsc", "kind", "level"),
    [(0x00, e.FaultKind.ADDRESS_SIZE, 0), (0x07, e.FaultKind.TRANSLATION, 3),
     (0x09, e.FaultKind.ACCESS_FLAG, 1), (0x0D, e.FaultKind.PERMISSION, 1),
     (0x10, e.FaultKind.SYNC_EXTERNAL, None), (0x15, e.FaultKind.SYNC_EXTERNAL_WALK, 1),
     (0x21, e.FaultKind.ALIGNMENT, None), (0x30, e.FaultKind.TLB_CONFLICT, None),
     (0x35, e.FaultKind.UNSUPPORTED_EXCLUSIVE, None), (0x3F, e.FaultKind.UNKNOWN, None)])
def test_decode_fsc_table(fsc: int, kind: e.FaultKind, level: int | None) -> None:
    """DFSC codes decode to the kind and level of the Arm ARM table."""
    assert e.decode_fsc(fsc) == e.FaultStatus(kind, level, fsc)


@given(st.integers(0, 0x3F))
def test_fsc_roundtrip(fsc: int) -> None:
    """Every decodable fault status code re-encodes to itself."""
    st_ = e.decode_fsc(fsc)
    if st_.kind is not e.FaultKind.UNKNOWN:
        assert e.encode_fsc(st_.kind, st_.level) == fsc


@given(st.integers(0, (1 << 32) - 1))
def test_esr_decode_encode_roundtrip(esr: int) -> None:
    """Decoding then encoding a data/instruction abort, sysreg or call syndrome is lossless
    for the fields they define."""
    s = e.decode_esr(esr)
    if isinstance(s, e.DataAbort):
        mask = ~(0b11 << 11) & 0xFFFFFFFF  # SET (FEAT_RAS) is not decoded
        assert s.encode() == esr & mask
    elif isinstance(s, e.SysRegAccess):
        assert s.encode() == esr & ~(0b111 << 22) & 0xFFFFFFFF
    elif isinstance(s, e.ImmediateCall):
        assert s.encode() == esr & ~(0x1FF << 16) & 0xFFFFFFFF


def test_data_abort_builder() -> None:
    """data_abort() builds the syndrome to inject into EL1 for a permission fault on a write."""
    s = e.data_abort(e.FaultKind.PERMISSION, 3, write=True, lower_el=False)
    assert s.encode() == 0x9600004F
