"""The trampoline's PTE fast path (layout "PTE fast path", kpcore/ptefast.py) on the testbed.

A harmless kernel PTE store (map of an ordinary page, unmap of one) is done at EL2 without a
round trip, with PXN forced, and the model replayed from the log is what the trapped store
would have left. Every other value still traps and is refused by Python's rules.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from secvma.attacks.scenarios import (
    AF,
    SH_INNER,
    SHELLCODE,
    VALID_PAGE,
    Verdict,
    _empty_pte_after,
    _ran,
)
from secvma.hvabi import Form
from secvma.kpcore import KPCore, make_policy
from secvma.kpcore.descs import PXN
from secvma.kpcore.pages import Usage
from secvma.platform import PhysAddr
from secvma.testbed.commands import TestbedSession

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def session() -> Iterator[tuple[TestbedSession, KPCore]]:
    hv = make_policy("hardened")
    with TestbedSession(hv) as s:
        yield s, hv


def _fast(s: TestbedSession) -> int:
    return int(s.platform.pte_fast_path.carried_out())  # type: ignore[attr-defined]


def _trapped(hv: KPCore) -> int:
    assert hv.st is not None
    return hv.st.events["Stage2Abort"]


def _ordinary_page(s: TestbedSession, hv: KPCore, k: int) -> int:
    """A host NONE page nothing maps (the module text pool: no module is loaded in this
    session), holding the shellcode; the pages the testbed allocates are EL1_INIT."""
    assert s.boot_info is not None and hv.st is not None
    pa = s.boot_info.mod_text_pool_end - 0x1000 * (k + 1)
    assert hv.st.pages.usage_of(pa >> 12) is Usage.NONE and not hv.st.pages.subcount_of(pa >> 12)
    s.platform.write(PhysAddr(pa), b"".join(w.to_bytes(4, "little") for w in SHELLCODE))
    return pa


def _slot(s: TestbedSession) -> tuple[int, int, int]:
    """(VA, slot PA, its linear-map VA) of an empty PTE slot of a live kernel table."""
    assert s.boot_info is not None
    page = s.alloc_page()
    assert page.ok
    m = s.vmap(int(page.ret[1]), 0x1000, 0)
    assert m.ok
    va, slot = _empty_pte_after(s, m.value)
    return va, slot, slot + s.boot_info.linear_offset


def test_harmless_map_and_unmap_are_done_at_el2_and_replayed_exactly(
        session: tuple[TestbedSession, KPCore]) -> None:
    s, hv = session
    assert hv.st is not None and hv.st.ptefast is not None, "armed after install on one CPU"
    pa = _ordinary_page(s, hv, 0)
    va, slot, lslot = _slot(s)
    hv.sync(s.platform)
    before = hv.st.pages.subcount_of(pa >> 12)
    fast, trapped = _fast(s), _trapped(hv)
    desc = pa | VALID_PAGE | AF | SH_INNER  # PXN clear: the fast path must set it
    assert s.write(lslot, desc, 8, Form.STR).ok
    assert _fast(s) == fast + 1 and _trapped(hv) == trapped
    assert s.platform.read_u64(PhysAddr(slot)) == desc | PXN
    hv.sync(s.platform)
    assert hv.st.pages.subcount_of(pa >> 12) == before + 1
    assert _ran(s, va, slot).verdict is Verdict.BLOCKED  # PXN: the planted code cannot run
    assert s.write(lslot, 0, 8, Form.STR).ok
    assert _fast(s) == fast + 2 and _trapped(hv) == trapped
    assert s.platform.read_u64(PhysAddr(slot)) == 0
    hv.sync(s.platform)
    assert hv.st.pages.subcount_of(pa >> 12) == before
    assert not hv.refusals and not hv.internal_errors
    assert not hv.check_invariants(s.platform)


@pytest.mark.parametrize("what", ["malformed", "width4", "kernel-text", "output-change"])
def test_a_value_the_fast_path_does_not_own_still_traps_and_is_refused(
        session: tuple[TestbedSession, KPCore], what: str) -> None:
    s, hv = session
    assert s.boot_info is not None and hv.st is not None
    pa = _ordinary_page(s, hv, 1)
    _va, slot, lslot = _slot(s)
    desc = pa | VALID_PAGE | AF | SH_INNER
    if what == "output-change":  # live entry -> another page: refused (write 0 first)
        assert s.write(lslot, desc, 8, Form.STR).ok
        desc = _ordinary_page(s, hv, 2) | VALID_PAGE | AF | SH_INNER
    before = s.platform.read_u64(PhysAddr(slot))
    value, width, rule = {
        "malformed": (desc & ~2, 8, "kpt-L3"),  # bits[1:0] = 01 at level 3
        "width4": (desc & 0xFFFF_FFFF, 4, None),  # no 64-bit syndrome: Python decodes it
        "kernel-text": ((s.boot_info.text + 0x1000) | VALID_PAGE | AF | SH_INNER, 8, None),
        "output-change": (desc, 8, "kpt-L3"),
    }[what]
    fast, trapped, refused = _fast(s), _trapped(hv), len(hv.refusals)
    w = s.write(lslot, value, width, Form.STR)
    assert _fast(s) == fast, "carried out at EL2"
    assert _trapped(hv) == trapped + 1, "did not reach Python"
    if rule is not None:
        assert not w.ok and len(hv.refusals) == refused + 1
        assert hv.refusals[-1].rule == rule
        assert s.platform.read_u64(PhysAddr(slot)) == before
    elif what == "width4":  # Python merges the low half into the slot and forces PXN
        assert s.platform.read_u64(PhysAddr(slot)) == value | PXN
    else:  # a leaf of kernel text may stay executable: Python's decision, not the fast path's
        assert s.platform.read_u64(PhysAddr(slot)) == value
    assert not hv.internal_errors
    if s.platform.read_u64(PhysAddr(slot)):  # leave the table as found for the next case
        s.write(lslot, 0, 8, Form.STR)
    hv.sync(s.platform)
    assert not hv.check_invariants(s.platform)
