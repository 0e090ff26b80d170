"""DMA protection on the fake machine: SMMUv3 encodings, the driver against an independent
SMMU model, SECvma's SMMU hypercalls (HVC 23-27) and their rules, INV-DMA."""

from __future__ import annotations

import pytest
from fakes import DATA, RODATA, TEXT, FakeMachine, booted, lva, slot_of, table_desc
from fakesmmu import SMMU_BASE
from hypothesis import given, settings
from hypothesis import strategies as hs

from secvma.arch import smmuv3 as A
from secvma.kpcore import KPCore
from secvma.kpcore.hostmem import map_page_host
from secvma.kpcore.pages import Usage
from secvma.kpcore.policy import policy_named
from secvma.kpcore.refusal import Errno
from secvma.platform import PhysAddr

MASK64 = (1 << 64) - 1
SID = 8  # 00:01.0
PAGE_A = 0x4500_3000
PAGE_B = 0x4500_5000
IOVA = 0x1234_5000
VMALLOC = 0xFFFF_8000_1000_0000


def neg(e: Errno) -> int:
    return (-int(e)) & MASK64


# ---- encodings ---------------------------------------------------------------------------

@given(hs.integers(0, (1 << 46) - 1).map(lambda v: v << 6))
def test_ste_round_trip(cd: int) -> None:
    v = A.decode_ste(A.ste_s1(cd))
    assert v.valid and v.config == A.STE_CFG_S1 and v.cd_pa == cd


def test_ste_invalid_and_abort() -> None:
    assert not A.decode_ste(A.STE_INVALID).valid
    v = A.decode_ste(A.ste_abort())
    assert v.valid and v.config == A.STE_CFG_ABORT


@given(hs.integers(0, (1 << 28) - 1).map(lambda v: v << 12), hs.integers(0, 0xFFFF))
def test_cd_round_trip(ttb: int, asid: int) -> None:
    v = A.decode_cd(A.cd_s1(ttb, asid))
    assert (v.valid, v.ttb0, v.asid, v.t0sz, v.aa64, v.record, v.epd1) == \
        (True, ttb, asid, 32, True, True, True)


def test_cd_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        A.cd_s1(0x1001, 1)
    with pytest.raises(ValueError):
        A.cd_s1(0x1000, 1 << 16)


@given(hs.integers(0, (1 << 36) - 1).map(lambda v: v << 12), hs.booleans())
def test_page_desc(pa: int, writable: bool) -> None:
    d = A.io_page_desc(pa, writable)
    assert d & A.PTE_ADDR_MASK == pa and d & 3 == 3 and d & A.PTE_AF
    assert A.io_desc_writable(d) is writable


@given(hs.integers(0, 0xFF), hs.integers(0, 0xFFFF), hs.integers(0, MASK64), hs.booleans())
def test_event_round_trip(etype: int, sid: int, iova: int, write: bool) -> None:
    ev = A.decode_event(A.encode_event(etype, sid, iova, write))
    assert (ev.type, ev.sid, ev.write) == (etype, sid, write)
    assert ev.iova == (iova if etype in (0x10, 0x11, 0x12, 0x13, 0x0B) else 0)


@settings(deadline=None)  # no wall-time assertion: 5000 steps took > 200 ms on a loaded host
@given(hs.integers(1, 10), hs.integers(0, 5000))
def test_queue_pointer_wraps(log2: int, steps: int) -> None:
    p = 0
    for _ in range(steps):
        p = A.q_inc(p, log2)
    n = 1 << log2
    assert A.q_index(p, log2) == steps % n
    assert (p >> log2) & 1 == (steps // n) & 1


@given(hs.integers(0, (1 << 32) - 1))
def test_io_index_covers_iova(iova: int) -> None:
    rebuilt = (A.io_index(iova, 1) << 30) | (A.io_index(iova, 2) << 21) | (A.io_index(iova, 3) << 12)
    assert rebuilt == iova & ~0xFFF


# ---- the driver against the fake SMMU ----------------------------------------------------

def _machine(policy: str = "hardened") -> tuple[FakeMachine, KPCore]:
    return booted(policy, smmu=True)


def test_smmu_enabled_before_the_kernel_runs_and_streams_off() -> None:
    m, hv = _machine()
    dev = m.plat.smmu_dev
    assert dev is not None and dev.enabled
    assert dev.translate(SID, PAGE_A, True) is None  # no context: refused
    hv.poll(m.plat)
    [r] = hv.refusals
    assert r.rule == "dma-fault" and r.values["stream"] == SID and "bad-ste" in r.reason


def test_map_translates_and_clear_invalidates(any_policy: str) -> None:
    m, hv = _machine(any_policy)
    dev = m.plat.smmu_dev
    assert dev is not None
    assert m.hvc(24, SID, 0, 0) == 0
    assert m.hvc(25, IOVA, PAGE_A, 3, SID, 0) == 0
    assert m.hvc(26, IOVA + 0x10, SID, 0) == PAGE_A + 0x10
    assert dev.dma_write(SID, IOVA + 8, b"hello")
    assert m.plat.read(PhysAddr(PAGE_A + 8), 5) == b"hello"
    assert hv.state.pages.count_of(PAGE_A >> 12) == 1
    assert m.hvc(27, IOVA, SID, 0) == 0
    assert hv.state.pages.count_of(PAGE_A >> 12) == 0
    assert not dev.dma_write(SID, IOVA + 8, b"again")  # TLB entry was invalidated
    assert m.hvc(26, IOVA, SID, 0) == 0
    hv.poll(m.plat)
    faults = [r for r in hv.refusals if r.rule == "dma-fault"]
    assert [(f.values["stream"], f.values["iova"]) for f in faults] == [(SID, IOVA + 8)]
    assert not hv.check_invariants(m.plat)


def test_read_only_mapping_refuses_device_writes() -> None:
    m, _hv = _machine()
    dev = m.plat.smmu_dev
    assert dev is not None
    m.hvc(24, SID, 0, 0)
    assert m.hvc(25, IOVA, PAGE_A, 1, SID, 0) == 0
    assert dev.translate(SID, IOVA, False) == PAGE_A
    assert not dev.dma_write(SID, IOVA, b"x")


def test_free_context_drops_every_mapping_and_count() -> None:
    m, hv = _machine()
    m.hvc(24, SID, 0, 0)
    for i in range(5):
        assert m.hvc(25, IOVA + i * 0x1000, PAGE_A + i * 0x1000, 3, SID, 0) == 0
    free_before = hv.state.dma.smmu.tables_free()
    assert m.hvc(23, SID, 0) == 0
    assert hv.state.dma.smmu.tables_free() == free_before + 3
    assert all(hv.state.pages.count_of((PAGE_A >> 12) + i) == 0
               for i in range(5))
    assert m.plat.smmu_dev is not None and m.plat.smmu_dev.translate(SID, IOVA, True) is None
    assert not hv.check_invariants(m.plat)


@pytest.mark.parametrize("target", [TEXT, RODATA, "hyp", "smmu"])
def test_map_of_protected_page_refused_hardened(target: object) -> None:
    m, hv = _machine("hardened")
    pa = {"hyp": 0x4000_1000, "smmu": SMMU_BASE}.get(target, target)  # type: ignore[call-overload]
    m.hvc(24, SID, 0, 0)
    assert m.hvc(25, IOVA, pa, 3, SID, 0) == neg(Errno.EPERM)
    assert m.hvc(26, IOVA, SID, 0) == 0
    assert m.plat.halted is None
    assert hv.state.pages.count_of(pa >> 12) == 0


@pytest.mark.parametrize("target", [TEXT, RODATA, "hyp"])
def test_map_of_protected_page_panics_secvma2024(target: object) -> None:
    """C: update_smmu_page panics ("Map to protected memory page")."""
    m, _hv = _machine("secvma2024")
    pa = {"hyp": 0x4000_1000}.get(target, target)  # type: ignore[call-overload]
    m.hvc(24, SID, 0, 0)
    m.hvc(25, IOVA, pa, 3, SID, 0)
    assert m.plat.halted is not None and "panic" in m.plat.halted


def test_map_argument_checks() -> None:
    m, hv = _machine()
    assert m.hvc(25, IOVA, PAGE_A, 3, SID, 0) == neg(Errno.ENOENT)  # no context
    m.hvc(24, SID, 0, 0)
    assert m.hvc(24, SID, 0, 0) == neg(Errno.EBUSY)
    assert m.hvc(24, 300, 0, 0) == neg(Errno.EINVAL)
    assert m.hvc(24, 9, 1, 0) == neg(Errno.EINVAL)  # a VM's bank
    assert m.hvc(25, IOVA + 1, PAGE_A, 3, SID, 0) == neg(Errno.EINVAL)
    assert m.hvc(25, 1 << 32, PAGE_A, 3, SID, 0) == neg(Errno.EINVAL)
    assert m.hvc(25, IOVA, PAGE_A + 4, 3, SID, 0) == neg(Errno.EINVAL)
    assert m.hvc(25, IOVA, PAGE_A, 0, SID, 0) == neg(Errno.EINVAL)
    assert m.hvc(25, IOVA, PAGE_A, 3, SID, 1) == neg(Errno.EINVAL)
    assert m.hvc(25, IOVA, PAGE_A, 3, SID, 0) == 0
    assert m.hvc(25, IOVA, PAGE_B, 3, SID, 0) == neg(Errno.EBUSY)
    assert m.hvc(27, IOVA + 0x1000, SID, 0) == neg(Errno.ENOENT)
    assert m.plat.halted is None and not hv.check_invariants(m.plat)


def test_without_smmu_the_calls_stay_unmodelled() -> None:
    m, _hv = booted("hardened")
    from secvma.hvabi import HVC_ENOSYS
    assert m.hvc(24, SID, 0, 0) == HVC_ENOSYS


def test_smmu_window_never_mapped_for_the_kernel() -> None:
    _m, hv = _machine()
    st = hv.state
    assert map_page_host(st, SMMU_BASE + 0x20) == "forbidden"
    assert map_page_host(st, SMMU_BASE + 0x1_0000) == "forbidden"
    assert map_page_host(st, SMMU_BASE - 0x1000) == "mapped"  # its neighbour is a device


def test_smmu_tables_live_in_hypervisor_memory() -> None:
    m, hv = _machine()
    assert hv.state.dma is not None
    smmu = hv.state.dma.smmu
    hyp_lo, hyp_hi = hv.state.hyp_range
    m.hvc(24, SID, 0, 0)
    m.hvc(25, IOVA, PAGE_A, 3, SID, 0)
    for pa in [smmu.ste_pa(SID), smmu.cd_pa(SID), *smmu.contexts[SID].tables]:
        assert hyp_lo <= pa < hyp_hi
        assert map_page_host(hv.state, pa) == "forbidden"
    assert hv.state.s2.pool_end <= smmu.pool


# ---- the reverse direction (spec §11 gap 5) ----------------------------------------------

def _link_as_pte_table(m: FakeMachine, pool: int) -> bool:
    return m.store(lva(slot_of(m, VMALLOC, 2)), table_desc(pool)).done


def test_dma_mapped_page_cannot_become_a_table_until_cleared() -> None:
    m, hv = _machine("hardened")
    pool = m.kernel.alloc_pool()
    m.hvc(24, SID, 0, 0)
    assert m.hvc(25, IOVA, pool, 3, SID, 0) == 0
    assert not _link_as_pte_table(m, pool)
    assert hv.state.pages.usage_of(pool >> 12) is Usage.NONE
    assert any(r.rule.startswith("kpt") and r.code is Errno.EBUSY
               for r in hv.refusals)
    assert m.hvc(27, IOVA, SID, 0) == 0
    assert _link_as_pte_table(m, pool)
    assert hv.state.pages.usage_of(pool >> 12) is Usage.EL1_PTE
    # and a table page can no longer be given to a device
    assert m.hvc(25, IOVA, pool, 3, SID, 0) == neg(Errno.EPERM)
    assert not hv.check_invariants(m.plat)


def test_dma_mapped_page_becomes_a_table_quirk() -> None:
    """secvma2024 (gap 5): the claim ignores the DMA count, the device keeps write access to
    a kernel page table, and INV-DMA reports it."""
    m, hv = _machine("secvma2024")
    assert policy_named("secvma2024").quirks.dma_count_unchecked
    pool = m.kernel.alloc_pool()
    m.hvc(24, SID, 0, 0)
    assert m.hvc(25, IOVA, pool, 3, SID, 0) == 0
    assert _link_as_pte_table(m, pool)
    assert hv.state.pages.usage_of(pool >> 12) is Usage.EL1_PTE
    dev = m.plat.smmu_dev
    assert dev is not None and dev.dma_write(SID, IOVA, (0xDEAD_0000_0003).to_bytes(8, "little"))
    assert m.plat.read_u64(PhysAddr(pool)) == 0xDEAD_0000_0003
    found = hv.check_invariants(m.plat)
    assert any(v.inv == "INV-DMA" for v in found)


def test_invariant_full_check_sees_a_forged_ste() -> None:
    m, hv = _machine()
    smmu = hv.state.dma.smmu
    m.plat.write(PhysAddr(smmu.ste_pa(5)), A.ste_s1(smmu.cd_pa(5)))
    assert any("STE" in v.detail for v in hv.check_invariants(m.plat))


def test_data_page_is_not_a_dma_target() -> None:
    """EL1_DATA (kernel .data/.bss) has a usage class: refused like text."""
    m, _hv = _machine()
    m.hvc(24, SID, 0, 0)
    assert m.hvc(25, IOVA, DATA, 3, SID, 0) == neg(Errno.EPERM)


def test_clear_rings_the_doorbell_from_the_vcpu_and_checks_periodically() -> None:
    """HVC 27's TLBI + SYNC is rung by the trapping vCPU at EL2 (no device-model round trip);
    every SYNC_EVERY commands the driver rings synchronously and checks the consumer."""
    from secvma.kpcore.smmu import SYNC_EVERY

    m, hv = _machine()
    dev = m.plat.smmu_dev
    assert dev is not None
    m.hvc(24, SID, 0, 0)
    posted0, reads0 = m.plat.posted, dev.accesses
    assert m.hvc(25, IOVA, PAGE_A, 3, SID, 0) == 0
    assert m.hvc(27, IOVA, SID, 0) == 0
    assert m.plat.posted == posted0 + 1 and dev.accesses == reads0 + 1  # one doorbell write
    for _ in range(SYNC_EVERY):
        m.hvc(25, IOVA, PAGE_A, 3, SID, 0)
        m.hvc(27, IOVA, SID, 0)
    assert hv.state.dma is not None and hv.state.dma.smmu.unchecked < SYNC_EVERY
    assert dev.regs[0x9C] == hv.state.dma.smmu.cmdq_prod


def test_snapshot_reports_dma() -> None:
    """`secvma inspect` shows the SMMU's streams, mapped pages and faults."""
    m, hv = _machine()
    m.hvc(24, SID, 0, 0)
    m.hvc(25, IOVA, PAGE_A, 3, SID, 0)
    assert hv.snapshot()["dma"] == {"streams": 1, "faults": 0, "mapped_pages": 1,
                                    "smmu_commands": hv.state.dma.smmu.commands,  # type: ignore[union-attr]
                                    "smmu_syncs": hv.state.dma.smmu.syncs}  # type: ignore[union-attr]
    assert booted("hardened")[1].snapshot()["dma"] is None
