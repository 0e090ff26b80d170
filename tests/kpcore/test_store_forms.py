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

from secvma.kpcore import KPCore
from secvma.kpcore.invariants import check
from secvma.platform import PhysAddr

TARGET = 0x4500_0000  # an ordinary page the attacker wants executable


def _live_pte_table(policy: str) -> tuple[FakeMachine, KPCore, int]:
    m, hv = booted(policy)
    table, _slot = map_vmalloc(m, VMALLOC, TARGET)
    return m, hv, table


@pytest.mark.parametrize("form", RMW_FORMS + SIMD_FORMS)
def test_hardened_refuses_unemulable_forms(form: str) -> None:
    m, hv, table = _live_pte_table("hardened")
    slot = table + 8 * 40
    before = m.plat.read(PhysAddr(table), 4096)
    width = 16 if form in SIMD_FORMS else 8
    r = m.store(lva(slot), page_desc(TARGET), width, form, value2=0)
    assert not r.done and r.injected is not None, r
    assert [x.rule for x in hv.refusals] == ["kpt-decode"], hv.refusals
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
