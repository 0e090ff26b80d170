"""Transparent mode's DMA identity map on the fake machine: IOVA = PA for exactly the ordinary
pages, kept in step with the page-usage table through the class-change hook."""

from __future__ import annotations

from fakes import RAM_BASE, FakePlatform
from fakesmmu import SMMU_BASE

from secvma.kpcore.dmaidentity import IdentityDma
from secvma.kpcore.hostmem import set_class
from secvma.kpcore.pages import Usage, commit_give_el2
from secvma.kpcore.transparent import TransparentKPCore

PAGE = 0x4500_3000
SIDS = (0, 8, 255)


def _setup() -> tuple[FakePlatform, TransparentKPCore, IdentityDma]:
    plat = FakePlatform(smmu=True)
    hv = TransparentKPCore()
    st = hv.attach(plat)
    assert st.dma is not None and st.dma.identity is not None
    return plat, hv, st.dma.identity


def test_every_ordinary_page_is_identity_mapped_for_every_stream() -> None:
    plat, hv, ident = _setup()
    dev = plat.smmu_dev
    assert dev is not None and dev.enabled
    for sid in SIDS:
        assert dev.translate(sid, PAGE + 0x10, True) == PAGE + 0x10
    st = hv.state
    hyp_pages = st.hyp_range[1] - st.hyp_range[0]
    assert sum(ident.mapped) == plat.ram_size // 4096 - hyp_pages // 4096


def test_hypervisor_memory_and_smmu_are_unreachable() -> None:
    plat, hv, _ = _setup()
    dev = plat.smmu_dev
    assert dev is not None
    assert dev.translate(8, RAM_BASE + 0x1000, True) is None
    smmu = hv.state.dma.smmu  # type: ignore[union-attr]
    assert dev.translate(8, smmu.ste_pa(8), False) is None
    assert hv.state.s2.leaf(SMMU_BASE) is None and hv.state.s2.leaf(SMMU_BASE + 0x1_0000) is None
    assert hv.state.s2.leaf(SMMU_BASE - 0x1000) is not None  # the other devices stay mapped


def test_page_that_becomes_a_table_leaves_the_device_tables_and_tlb() -> None:
    plat, hv, ident = _setup()
    dev = plat.smmu_dev
    assert dev is not None
    assert dev.dma_write(8, PAGE, b"ok")  # the SMMU's TLB now holds the page
    tlbi_before = dev.commands.count(0x12)
    set_class(hv.state, PAGE >> 12, Usage.EL1_PTE)
    assert ident.pending == [PAGE]
    from secvma.kpcore import dma
    dma.end_of_trap(hv.state, None)  # what transparent's handle does before the guest resumes
    assert dev.commands.count(0x12) == tlbi_before + 1 and not ident.pending
    assert not dev.dma_write(8, PAGE, b"no")
    assert not ident.is_mapped(PAGE >> 12)
    from secvma.kpcore import invariants

    assert not invariants.check(hv.state, plat, full=True)
    set_class(hv.state, PAGE >> 12, Usage.NONE)  # released: ordinary again
    assert dev.dma_write(8, PAGE, b"ok")
    assert not invariants.check(hv.state, plat, full=True)


def test_page_given_to_the_hypervisor_leaves_the_device_tables() -> None:
    plat, hv, ident = _setup()
    dev = plat.smmu_dev
    assert dev is not None
    assert dev.dma_write(0, PAGE, b"x")
    commit_give_el2(hv.state.pages, PAGE >> 12)
    ident.flush()
    assert not dev.dma_write(0, PAGE, b"x")
    assert ident.unmapped == 1


def test_invariant_catches_a_stale_identity_entry() -> None:
    """INV-DMA is not vacuous: a protected page left in the table is reported."""
    from secvma.kpcore import invariants

    plat, hv, _ident = _setup()
    hv.state.pages.listeners.clear()  # simulate a missed hook
    set_class(hv.state, PAGE >> 12, Usage.EL1_KCODE)
    found = invariants.check(hv.state, plat)
    assert any(v.inv == "INV-DMA" for v in found)


def test_many_drops_in_one_trap_cost_one_invalidation() -> None:
    """A swapper learn reclassifies thousands of pages: one TLBI_NH_ASID + SYNC for all."""
    plat, hv, ident = _setup()
    dev = plat.smmu_dev
    assert dev is not None
    for k in range(100):
        assert dev.dma_write(8, PAGE + k * 0x1000, b"y")
    syncs = dev.commands.count(0x46)
    for k in range(100):
        set_class(hv.state, (PAGE >> 12) + k, Usage.EL1_KCODE)
    ident.flush()
    assert dev.commands.count(0x46) == syncs + 1 and dev.commands[-2] == 0x11
    assert not any(dev.dma_write(8, PAGE + k * 0x1000, b"n") for k in range(100))


def test_msi_doorbell_is_the_only_device_page_mapped() -> None:
    """A PCI device signals MSI-X by writing the GICv2m frame: mapped; other MMIO is not."""
    from fakesmmu import MSI_BASE

    from secvma.kpcore import invariants

    plat, hv, ident = _setup()
    dev = plat.smmu_dev
    assert dev is not None
    assert dev.translate(8, MSI_BASE + 0x40, True) == MSI_BASE + 0x40
    assert dev.translate(8, MSI_BASE + 0x1000, True) is None
    assert dev.translate(8, SMMU_BASE, True) is None
    assert ident.msi == {MSI_BASE}
    assert not invariants.check(hv.state, plat, full=True)


def test_transparent_invariants_check_dma_before_and_after_arming() -> None:
    """`--check-invariants` under transparent runs INV-DMA after every trap, also before the
    policy arms: a page that became text while still reachable by devices is reported."""
    from secvma.kpcore import tinvariants

    plat, hv, _ident = _setup()
    assert not hv.armed
    assert not tinvariants.check(hv, plat)
    hv.state.pages.listeners.clear()  # simulate a missed hook
    set_class(hv.state, PAGE >> 12, Usage.EL1_KCODE)
    found = tinvariants.check(hv, plat)
    assert [v.inv for v in found] == ["INV-DMA"]
    assert not tinvariants.check(hv, plat)  # incremental: only pages changed since the last call


def test_incremental_inv_dma_reads_the_io_table_not_only_the_record() -> None:
    """A leaf left in the IO table although the record says the page was taken away (a
    hook that updated its bookkeeping but not memory) is caught by the per-trap check."""
    from secvma.arch import smmuv3 as A
    from secvma.kpcore import invariants

    plat, hv, ident = _setup()
    set_class(hv.state, PAGE >> 12, Usage.EL1_PTE)
    ident.flush()
    assert not invariants.check_dma(hv.state, plat)
    hv.state.pages.dirty.clear()
    plat.write_u64(ident._leaf_slot(PAGE), A.io_page_desc(PAGE, True))  # stale leaf in memory
    hv.state.pages.dirty.add(PAGE >> 12)
    found = invariants.check_dma(hv.state, plat)
    assert found and all(v.inv == "INV-DMA" for v in found)
    assert "differs from the record" in found[0].detail
