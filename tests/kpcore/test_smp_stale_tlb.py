"""Issue 13, race-s2-stale, stepped deterministically on the fake machine.

On QEMU a trap's TLB invalidation (`tlbi ...is`) runs in the trampoline after Python answered,
so between a stage-2 change and that invalidation another CPU can still store through a stale
TLB entry (measured on the testbed: ~5e5 stores by CPU 1 during one HVC 33). The fake models
exactly that window: after a trap that queued a TLB invalidation, before the next instruction
of the trapping CPU, "CPU 1" writes the page once through its stale entry.
"""

from __future__ import annotations

import pytest
from fakes import PT_POOL, TEXT, booted, lva

from secvma.kpcore.pages import Usage
from secvma.platform import PhysAddr
from secvma.sim.machine import FakeMachine

PGD = PT_POOL + 0x10_000
SLOT = PGD + 8 * 5
EVIL = (PGD + 0x1000) | 1  # a block-type entry: never written by the hypervisor in a root
TEXT_PAGE = TEXT + 0x1000


def _stale_store_after_first_flush(m: FakeMachine, pa: int, value: int) -> list[int]:
    """Once: right after the first trap that queued a TLB invalidation, store `value` at `pa`
    as a CPU whose TLB still holds the old, writable stage-2 entry would."""
    fired: list[int] = []
    inner = m.event

    def event(ev: object, cpu: object = None) -> None:
        n = len(m.plat.flushes)
        inner(ev, cpu)  # type: ignore[arg-type]
        if len(m.plat.flushes) > n and not fired:
            m.plat.write_u64(PhysAddr(pa), value)
            fired.append(m.traps)

    m.event = event  # type: ignore[method-assign]
    return fired


@pytest.mark.parametrize("policy", ["secvma2024", "hardened"])
def test_hvc33_discards_a_store_through_a_stale_tlb(policy: str) -> None:
    m, hv = booted(policy)
    assert m.store(lva(SLOT), 0).done  # CPU 1 used the page: its TLB holds a writable entry
    fired = _stale_store_after_first_flush(m, SLOT, EVIL)
    traps = m.traps
    m.hvc(33, PGD)
    assert fired, "HVC 33 changed stage 2 without a TLB invalidation"
    assert hv.state.pages.usage_of(PGD >> 12) is Usage.EL0_PGD
    assert m.plat.read_u64(PhysAddr(SLOT)) == 0, "the stale store survived in a registered root"
    assert not hv.check_invariants(m.plat)
    assert m.traps - traps == 2, "HVC 33 is re-executed once its TLB invalidation ran"
    assert m.hvc(35, PGD, 7) == 0  # the root is usable once registered


def test_an_unsettled_root_can_be_neither_loaded_nor_released() -> None:
    """Between the claim and its retry the page is no root yet: HVC 35 and HVC 34 are refused
    (EBUSY), and another CPU's HVC 33 of it too."""
    from secvma.kpcore import userpgd
    from secvma.kpcore.refusal import HypRefusal

    m, hv = booted("hardened")
    st = hv.state
    assert not userpgd.alloc_el0_pgd(st, m.plat, m.cpu, PGD)  # the claim: not yet a root
    assert PGD >> 12 in st.pgd_pending and PGD >> 12 in st.unsettled
    with pytest.raises(HypRefusal, match="still being registered"):
        userpgd.do_switch_mm(st, m.cpu, PGD, 7)
    with pytest.raises(HypRefusal, match="still being registered"):
        userpgd.free_el0_pgd(st, m.plat, PGD)
    other = type(m.cpu)(index=1)
    with pytest.raises(HypRefusal, match="another CPU"):
        userpgd.alloc_el0_pgd(st, m.plat, other, PGD)  # type: ignore[arg-type]
    assert userpgd.alloc_el0_pgd(st, m.plat, m.cpu, PGD)  # the retry completes it
    assert PGD >> 12 not in st.pgd_pending and PGD >> 12 in st.user_roots


@pytest.mark.parametrize("policy", ["secvma2024", "hardened"])
def test_new_kernel_table_discards_a_store_through_a_stale_tlb(policy: str) -> None:
    """Linking a pool page as a PTE table claims it (zeroed, RO) and retries the link store;
    CPU 1's stale store of an executable PTE into it, between the claim and the TLB
    invalidation, must not be in the table once it is linked."""
    from fakes import VMALLOC, slot_of, table_desc

    m, hv = booted(policy)
    pool = m.kernel.alloc_pool()
    assert m.store(lva(pool), 0).done  # the page was in use: CPU 1's TLB may hold it writable
    evil = TEXT_PAGE | 0x403  # a page descriptor to kernel text, PXN clear, AF
    _stale_store_after_first_flush(m, pool + 8 * 7, evil)
    pmd_slot = slot_of(m, VMALLOC, 2)
    r = m.store(lva(pmd_slot), table_desc(pool))
    assert r.done
    assert hv.state.pages.usage_of(pool >> 12) is Usage.EL1_PTE
    assert m.plat.read_u64(PhysAddr(pmd_slot)) == table_desc(pool)
    assert m.plat.read_u64(PhysAddr(pool + 8 * 7)) == 0, "the stale PTE is live in a kernel table"
    assert not hv.check_invariants(m.plat)
