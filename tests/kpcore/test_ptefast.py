"""The PTE fast path's model side (kpcore/ptefast.py): bitmaps, log replay, mismatches.

`FakePteFast` carries out a store exactly when the trampoline would (layout "PTE fast path"),
so a sequence of stores run through it and replayed must leave the model, RAM and invariants
as the same sequence trapped one by one.
"""

from __future__ import annotations

from array import array

import pytest
from fakes import DATA, PXN, TEXT, VMALLOC, FakeMachine, lva, map_vmalloc, page_desc

from secvma.kpcore import KPCore, make_policy, ptefast
from secvma.kpcore.pages import Owner, Usage
from secvma.platform import PhysAddr, PteFastPath

OA = 0x0000_FFFF_FFFF_F000
ORDINARY = [0x4500_0000 + 0x1000 * i for i in range(8)]


class FakePteFast:
    """The trampoline's fast path over a fake platform (bitmaps, log, the two store kinds)."""

    def __init__(self, m: FakeMachine) -> None:
        self.m = m
        self.tables = bytearray()
        self.ordinary = bytearray()
        self.enabled = False
        self.log: list[tuple[int, int, int, int]] = []

    def load(self, tables: bytes, ordinary: bytes) -> None:
        self.tables, self.ordinary = bytearray(tables), bytearray(ordinary)

    def mark(self, pfn: int, table: bool, ordinary: bool) -> None:
        i = pfn - (self.m.plat.ram_base >> 12)
        for bits, on in ((self.tables, table), (self.ordinary, ordinary)):
            bits[i >> 3] = (bits[i >> 3] | 1 << (i & 7)) if on else bits[i >> 3] & ~(1 << (i & 7))

    def enable(self, cpu: object, on: bool) -> None:
        self.enabled = on

    def drain(self) -> list[tuple[int, int, int, int]]:
        out, self.log = self.log, []
        return out

    def _bit(self, bits: bytearray, pa: int) -> bool:
        i = (pa - self.m.plat.ram_base) >> 12
        return 0 <= i < 8 * len(bits) and bool(bits[i >> 3] >> (i & 7) & 1)

    def store(self, slot: int, new: int) -> bool:
        """A 64-bit STR of `new` at `slot`: carried out here (True) or left to trap."""
        plat = self.m.plat
        if not self.enabled or slot & 7 or not self._bit(self.tables, slot):
            return False
        old = plat.read_u64(PhysAddr(slot))
        if old == 0 and new & 3 == 3 and self._bit(self.ordinary, new & OA):
            new |= PXN
        elif new == 0 and old & 3 == 3 and self._bit(self.ordinary, old & OA):
            pass
        else:
            return False
        plat.write_u64(PhysAddr(slot), new)
        self.log.append((0, slot, old, new))
        return True


def _armed() -> tuple[FakeMachine, KPCore, FakePteFast, int]:
    hv = make_policy("hardened")
    m = FakeMachine(hv, ncpus=1, boot=False)
    fast = FakePteFast(m)
    m.plat.pte_fast_path = fast  # type: ignore[attr-defined]
    m.boot()  # armed at the end of the install hypercall
    table, _slot = map_vmalloc(m, VMALLOC, ORDINARY[0])
    assert hv.state.ptefast is not None and fast.enabled
    return m, hv, fast, table


def _model(hv: KPCore) -> tuple[bytes, bytes, bytes]:
    p = hv.state.pages
    return bytes(p.owner), bytes(p.usage), array("I", p.subcount).tobytes()


def test_fake_satisfies_the_protocol() -> None:
    assert isinstance(FakePteFast(FakeMachine(make_policy("hardened"), ncpus=1)), PteFastPath)


def test_bitmaps_mark_pte_tables_and_ordinary_pages_and_follow_class_changes() -> None:
    m, hv, fast, table = _armed()
    p = hv.state.pages
    for pfn in range(p.base_pfn, p.base_pfn + p.npages, 97):
        assert fast._bit(fast.tables, pfn << 12) is (
            p.owner_of(pfn) is Owner.HOST and p.usage_of(pfn) is Usage.EL1_PTE)
        assert fast._bit(fast.ordinary, pfn << 12) is (
            p.owner_of(pfn) is Owner.HOST and p.usage_of(pfn) is Usage.NONE)
    assert fast._bit(fast.tables, table) and not fast._bit(fast.ordinary, table)
    assert not fast._bit(fast.ordinary, TEXT) and not fast._bit(fast.ordinary, DATA)
    new_table, _ = map_vmalloc(m, VMALLOC + (1 << 21), ORDINARY[1])  # claims a pool page
    assert fast._bit(fast.tables, new_table) and not fast._bit(fast.ordinary, new_table)


def test_replayed_fast_stores_leave_the_model_as_trapped_stores() -> None:
    """Same maps and unmaps, trapped one by one vs carried out by the fast path and replayed."""
    m, hv, fast, table = _armed()
    ref = make_policy("hardened")
    r = FakeMachine(ref, ncpus=1)
    rtable, _ = map_vmalloc(r, VMALLOC, ORDINARY[0])
    assert rtable == table
    ops = [(1, ORDINARY[1]), (2, ORDINARY[2]), (3, ORDINARY[1]), (1, 0), (4, ORDINARY[3]),
           (2, 0), (5, ORDINARY[1]), (3, 0), (6, DATA), (6, 0)]
    for idx, pa in ops:
        slot = table + 8 * idx
        value = page_desc(pa, pxn=False) if pa else 0
        carried = fast.store(slot, value)
        assert carried is (idx != 6), (idx, hex(pa))  # slot 6 maps DATA: not ordinary
        if not carried:
            assert m.store(lva(slot), value).done
        assert r.store(lva(rtable + 8 * idx), value).done
    hv.sync(m.plat)
    assert not fast.log and hv.state.ptefast is not None
    assert hv.state.ptefast.replayed == 8
    assert _model(hv) == _model(ref)
    assert m.plat.read(PhysAddr(table), 4096) == r.plat.read(PhysAddr(rtable), 4096)
    assert not hv.refusals and not hv.internal_errors and not hv.check_invariants(m.plat)


def test_the_next_trap_replays_the_log_before_it_decides() -> None:
    """An unmap then a trapped table release: the release sees the replayed counts."""
    m, hv, fast, table = _armed()
    slot = table + 8
    assert fast.store(slot, page_desc(ORDINARY[1]))
    assert hv.st is not None and hv.st.pages.subcount_of(ORDINARY[1] >> 12) == 0  # not yet
    assert m.store(lva(table + 16), page_desc(TEXT + 0x1000)).done  # not ordinary: traps
    assert not fast.log and hv.st.pages.subcount_of(ORDINARY[1] >> 12) == 1
    assert not hv.check_invariants(m.plat)


@pytest.mark.parametrize("entry", ["no-pxn", "not-ordinary", "malformed", "live-change",
                                   "not-a-table"])
def test_a_logged_store_the_rules_do_not_produce_halts_as_internal_error(entry: str) -> None:
    m, hv, fast, table = _armed()
    slot = table + 8
    old, new = {
        "no-pxn": (0, page_desc(ORDINARY[1], pxn=False)),  # the rules force PXN
        "not-ordinary": (0, page_desc(TEXT + 0x1000, pxn=True)),
        "malformed": (0, (ORDINARY[1] | 1) | PXN),
        "live-change": (page_desc(ORDINARY[1], pxn=True), page_desc(ORDINARY[2], pxn=True)),
        "not-a-table": (0, page_desc(ORDINARY[1], pxn=True)),
    }[entry]
    if entry == "not-a-table":
        slot = DATA + 8
    st = hv.state
    with pytest.raises(ptefast.FastPathMismatch):
        ptefast.replay_one(st, m.plat, slot, old, new)
    m.plat.write_u64(PhysAddr(slot), new)
    fast.log.append((0, slot, old, new))
    m.store(lva(table + 16), page_desc(TEXT + 0x1000))  # the next trap replays it
    assert hv.internal_errors and "FastPathMismatch" in hv.internal_errors[-1].error
    assert m.plat.halted is not None


@pytest.mark.parametrize("policy,ncpus", [("hardened", 2), ("secvma2024", 1)])
def test_not_armed_on_smp_or_other_policies(policy: str, ncpus: int) -> None:
    hv = make_policy(policy)
    m = FakeMachine(hv, ncpus=ncpus, boot=False)
    m.plat.pte_fast_path = FakePteFast(m)  # type: ignore[attr-defined]
    m.boot()
    map_vmalloc(m, VMALLOC, ORDINARY[0])
    assert hv.state.ptefast is None and not m.plat.pte_fast_path.enabled  # type: ignore[attr-defined]


def test_reading_the_state_replays_the_log() -> None:
    """`KPCore.state` between traps is exact: the machine's stores so far are accounted for."""
    _m, hv, fast, table = _armed()
    assert fast.store(table + 8, page_desc(ORDINARY[1]))
    assert hv.state.pages.subcount_of(ORDINARY[1] >> 12) == 1 and not fast.log
