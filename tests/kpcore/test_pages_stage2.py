"""Page-usage table transitions and the stage-2 table manager."""

from __future__ import annotations

import pytest
from fakes import RAM_BASE, RAM_SIZE, FakePlatform, booted

from secvma.arch.walk import AccessType, Fault, translate_stage2
from secvma.kpcore.pages import (
    Owner,
    PageTable,
    Usage,
    check_claim_table,
    commit_claim_table,
    ref_dec_and_test,
    ref_inc,
)
from secvma.kpcore.refusal import Errno, HypRefusal
from secvma.kpcore.stage2 import VTCR_4G, PermKind, Stage2, kind_of


def test_page_table_reads_invalid_outside_ram() -> None:
    """Pages outside RAM have owner INVALID and class NONE, and never a record."""
    pt = PageTable(RAM_BASE, RAM_SIZE)
    assert pt.owner_of(0x1000) is Owner.INVALID
    assert pt.usage_of(0x1000) is Usage.NONE
    assert pt.index((RAM_BASE + RAM_SIZE) >> 12) is None


def test_page_table_sized_for_64gib_refuses_more() -> None:
    """The arrays hold up to 64 GiB; a larger RAM is rejected at construction."""
    with pytest.raises(ValueError):
        PageTable(RAM_BASE, (64 << 30) + 4096)


def test_claim_needs_host_none_page() -> None:
    """A table claim is refused with EPERM on a classified page and EINVAL outside RAM."""
    pt = PageTable(RAM_BASE, RAM_SIZE)
    pfn = (RAM_BASE >> 12) + 100
    check_claim_table(pt, pfn, Usage.EL1_PTE, rule="t")
    commit_claim_table(pt, pfn, Usage.EL1_PTE)
    with pytest.raises(HypRefusal) as e:
        check_claim_table(pt, pfn, Usage.EL1_PMD, rule="t")
    assert e.value.code is Errno.EPERM
    with pytest.raises(HypRefusal) as e:
        check_claim_table(pt, 5, Usage.EL1_PMD, rule="t")
    assert e.value.code is Errno.EINVAL


def test_subcount_dec_and_test_reports_last_reference() -> None:
    """dec_and_test is True exactly on 1 -> 0 and asserts instead of wrapping."""
    pt = PageTable(RAM_BASE, RAM_SIZE)
    pfn = (RAM_BASE >> 12) + 7
    ref_inc(pt, pfn)
    ref_inc(pt, pfn)
    assert not ref_dec_and_test(pt, pfn)
    assert ref_dec_and_test(pt, pfn)
    with pytest.raises(AssertionError):
        ref_dec_and_test(pt, pfn)


def test_subcount_wraps_only_as_quirk() -> None:
    """allow_wrap reproduces the C decrement of a zero count (gap 17)."""
    pt = PageTable(RAM_BASE, RAM_SIZE)
    pfn = (RAM_BASE >> 12) + 7
    assert not ref_dec_and_test(pt, pfn, allow_wrap=True)
    assert pt.subcount_of(pfn) == 0xFFFF_FFFF


def _s2() -> tuple[FakePlatform, Stage2]:
    plat = FakePlatform()
    return plat, Stage2(plat, RAM_BASE + 0x20_0000, RAM_BASE + 0x200_0000)


def _walk(plat: FakePlatform, s2: Stage2, ipa: int, access: AccessType) -> object:
    return translate_stage2(plat.read_u64, ipa, access, 1, vtcr=VTCR_4G, vttbr=s2.vttbr())


def test_stage2_map_is_seen_by_the_hardware_walk() -> None:
    """A leaf written by the manager translates with its permission in arch.walk."""
    plat, s2 = _s2()
    s2.map_leaf(0x4400_0000, 2, PermKind.RO)
    assert not isinstance(_walk(plat, s2, 0x4410_1000, AccessType.LOAD), Fault)
    res = _walk(plat, s2, 0x4410_1000, AccessType.STORE)
    assert isinstance(res, Fault) and res.kind.value == "permission"
    assert s2.leaf(0x4410_1000) == (0x4400_0000, 2, s2.leaves[0x4400_0000][1])


def test_stage2_split_keeps_every_page_mapped() -> None:
    """Splitting a 1 GiB block gives 512 identical 2 MiB leaves (make-before-break)."""
    plat, s2 = _s2()
    s2.map_leaf(0x4000_0000, 1, PermKind.KERNEL)
    s2.split_to_page(0x4123_4000)
    assert s2.leaf(0x4123_4000)[1] == 3  # type: ignore[index]
    for ipa in (0x4000_0000, 0x4123_4000, 0x7FFF_F000):
        leaf = s2.leaf(ipa)
        assert leaf is not None and kind_of(leaf[2]) is PermKind.KERNEL
        assert not isinstance(_walk(plat, s2, ipa, AccessType.STORE), Fault)
    assert 0x4000_0000 in s2.pending_flush


def test_stage2_pool_exhaustion_is_enomem() -> None:
    """The check phase refuses with ENOMEM when the pool cannot hold the tables."""
    plat = FakePlatform()
    s2 = Stage2(plat, RAM_BASE + 0x20_0000, RAM_BASE + 0x20_2000)
    with pytest.raises(HypRefusal) as e:
        s2.check_available(2, rule="t")
    assert e.value.code is Errno.ENOMEM


def test_stage2_shadow_matches_tables_after_a_run() -> None:
    """After boot and lazy fills, the shadow leaf dict equals a walk of the real tables."""
    _m, hv = booted("hardened")
    s2 = hv.state.s2
    for base, level, desc in list(s2.iter_leaves()):
        lvl, _slot, raw = s2.walk(base)
        assert (lvl, raw) == (level, desc)


def test_hardened_blocks_are_homogeneous_and_4k_mode_has_no_blocks() -> None:
    """INV-BLOCK in huge mode; only level-3 leaves in 4k mode."""
    _m, hv = booted("hardened", "4k")
    assert all(level == 3 for _b, level, _d in hv.state.s2.iter_leaves())
    m2, hv2 = booted("hardened", "huge")
    assert not hv2.check_invariants(m2.plat)
