"""Store forms the decoder does not emulate, and stores that do not fit one slot, trapped on a
live kernel table page of the fake machine (real encodings, through both stages): `hardened`
refuses each with a logged rule and an abort injected into EL1, leaving the table as it was;
`secvma2024` (no syndrome, not its STXR/STP special cases) panics. The emulable exclusive
STLXR is emulated by `hardened` with PXN forced."""

from __future__ import annotations

import pytest
from fakes import (
    PXN,
    RMW_FORMS,
    SIMD_FORMS,
    VMALLOC,
    FakeMachine,
    booted,
    lva,
    map_vmalloc,
    page_desc,
)

from secvma.arch.esr import DataAbort
from secvma.kpcore import KPCore
from secvma.kpcore.invariants import check
from secvma.platform import PhysAddr, Stage2Abort
from secvma.sim.machine import INSN_SLOT, kva

TARGET = 0x4500_0000  # an ordinary page the attacker wants executable


def _live_pte_table(policy: str) -> tuple[FakeMachine, KPCore, int]:
    m, hv = booted(policy)
    table, _slot = map_vmalloc(m, VMALLOC, TARGET)
    return m, hv, table


@pytest.mark.parametrize("form", RMW_FORMS + SIMD_FORMS)
def test_hardened_refuses_unemulable_forms(form: str) -> None:
    """SIMD stores are not decoded (kpt-decode); FEAT_LSE atomics are decoded and their value
    (here the model's Xs = 0xDEAD, no descriptor) is refused by the table rules."""
    m, hv, table = _live_pte_table("hardened")
    slot = table + 8 * 40
    before = m.plat.read(PhysAddr(table), 4096)
    width = 16 if form in SIMD_FORMS else 8
    r = m.store(lva(slot), page_desc(TARGET), width, form, value2=0)
    if form == "cas":  # CAS X4 (0xDEAD), X2, [X1]: the slot holds 0, no match, nothing stored
        assert r.done and not hv.refusals and m.cpu.regs[4] == 0, r
        assert m.plat.read(PhysAddr(table), 4096) == before
        return
    assert not r.done and r.injected is not None, r
    want = "kpt-decode" if form in SIMD_FORMS else "kpt-L3"
    assert [x.rule for x in hv.refusals] == [want], hv.refusals
    assert m.plat.read(PhysAddr(table), 4096) == before
    assert not hv.internal_errors and not check(hv.state, m.plat, full=True)


@pytest.mark.parametrize("form", RMW_FORMS + SIMD_FORMS + ("stlxr",))
def test_secvma2024_panics_on_stores_without_syndrome(form: str) -> None:
    m, hv, table = _live_pte_table("secvma2024")
    width = 16 if form in SIMD_FORMS else 8
    m.store(lva(table + 8 * 40), page_desc(TARGET), width, form, value2=0)
    assert m.plat.halted and "panic" in m.plat.halted
    assert hv.refusals[-1].reason == "store without instruction syndrome"
    assert not hv.internal_errors


@pytest.mark.parametrize("width", [4, 8])
def test_hardened_emulates_stlxr_with_pxn_forced(width: int) -> None:
    m, hv, table = _live_pte_table("hardened")
    slot = table + 8 * 40
    desc = page_desc(TARGET) & ((1 << (8 * width)) - 1)  # 4: the low half, UXN not written
    r = m.store(lva(slot), desc, width, "stlxr")
    assert r.done, r
    assert m.plat.read_u64(PhysAddr(slot)) == desc | PXN
    assert not hv.refusals and not check(hv.state, m.plat, full=True)


@pytest.mark.parametrize("off", [0x1000 - 4, 0x1000 - 1, 40 * 8 + 4])
def test_hardened_refuses_unaligned_and_page_crossing_stores(off: int) -> None:
    """An 8-byte STR at `off` of a live table page: straddling two slots, or the page end."""
    m, hv, table = _live_pte_table("hardened")
    before = m.plat.read(PhysAddr(table), 8192)
    r = m.store(lva(table) + off, page_desc(TARGET) << 32, 8, "str")
    assert not r.done and r.injected is not None, r
    assert hv.refusals and hv.refusals[-1].rule in ("kpt-store", "kpt-decode")
    assert m.plat.read(PhysAddr(table), 8192) == before


def _lse_fault(m: FakeMachine, insn: int, slot: int) -> None:
    m.plat.write(PhysAddr(INSN_SLOT), insn.to_bytes(4, "little"))
    m.cpu.elr = kva(INSN_SLOT)
    esr = DataAbort(lower_el=True, il=True, isv=False, sas=0, sse=False, srt=0, sf=False,
                    ar=False, vncr=False, fnv=False, ea=False, cm=False, s1ptw=False, wnr=True,
                    dfsc=0x0F).encode()
    m.event(Stage2Abort(esr, lva(slot), PhysAddr(slot), False, True, False, False))


def test_hardened_emulates_lse_swp_clearing_a_live_pte() -> None:
    """Debian on -cpu max clears kernel PTEs with SWP (`ptep_get_and_clear`, LSE atomics):
    before the fix the decoder refused every FEAT_LSE form (kpt-decode), the vunmap path got a
    data abort and the kernel oopsed. Now SWP is emulated: slot cleared, Xt = the old entry."""
    m, hv, table = _live_pte_table("hardened")
    slot = next(table + 8 * i for i in range(512)
                if m.plat.read_u64(PhysAddr(table + 8 * i)) & 1)
    old = m.plat.read_u64(PhysAddr(slot))
    m.cpu.regs[1], m.cpu.regs[2], m.cpu.regs[6] = lva(slot), 0, 0x1234
    _lse_fault(m, 0xF8228026, slot)  # SWP X2, X6, [X1]
    assert not hv.refusals and not m.cpu.injected, hv.refusals
    assert m.plat.read_u64(PhysAddr(slot)) == 0 and m.cpu.regs[6] == old
    assert m.cpu.elr == kva(INSN_SLOT) + 4
    assert not hv.internal_errors and not check(hv.state, m.plat, full=True)


def test_hardened_validates_an_lse_cas_like_a_store() -> None:
    """CAS into a table page: the value stored when memory matches is validated by the same
    rules (a leaf to an ordinary page gets PXN forced); Xs receives the old entry."""
    m, hv, table = _live_pte_table("hardened")
    slot = table + 8 * 40
    assert m.plat.read_u64(PhysAddr(slot)) == 0
    m.cpu.regs[1], m.cpu.regs[2], m.cpu.regs[6] = lva(slot), 0, page_desc(TARGET) & ~PXN
    _lse_fault(m, 0xC8A27C26, slot)  # CAS X2, X6, [X1]: 0 == [X1] -> store X6
    assert not hv.refusals, hv.refusals
    assert m.plat.read_u64(PhysAddr(slot)) == (page_desc(TARGET) | PXN)
    assert m.cpu.regs[2] == 0
    assert not hv.internal_errors and not check(hv.state, m.plat, full=True)
