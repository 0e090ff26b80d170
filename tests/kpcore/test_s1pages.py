"""`fetch.S1Pages` (HVC 30's translator) answers exactly as the full stage-1 walk.

It walks the upper levels once per 2 MB region and reads level-3 entries directly: every
kind of level-3 entry it may meet is compared with `s1_translate` on the same tables.
"""

from __future__ import annotations

import pytest
from fakes import TEXT, VMALLOC, booted, kva, lva, map_vmalloc, page_desc

from secvma.arch.descriptors import AF
from secvma.arch.walk import AccessType
from secvma.kpcore.fetch import S1Pages, s1_translate
from secvma.platform import PhysAddr

PAGE = 0x4500_3000

ENTRIES = {
    "page": lambda pa: page_desc(pa),
    "page-pxn": lambda pa: page_desc(pa, pxn=True),
    "no-af": lambda pa: page_desc(pa) & ~AF,
    "reserved-01": lambda pa: (page_desc(pa) & ~3) | 1,
    "invalid-10": lambda pa: (page_desc(pa) & ~3) | 2,
    "zero": lambda pa: 0,
    "oa-bit-47": lambda pa: page_desc(pa) | (1 << 47),
    "oa-bit-40": lambda pa: page_desc(pa) | (1 << 40),
    "high-attrs": lambda pa: page_desc(pa) | (0x7F << 55),
}


@pytest.mark.parametrize("kind", sorted(ENTRIES))
def test_level3_entries_translate_as_the_full_walk(kind: str) -> None:
    m, _hv = booted("hardened")
    _table, slot0 = map_vmalloc(m, VMALLOC, PAGE)  # page 0 of the region: a valid leaf
    for k in range(1, 8):
        m.plat.write_u64(PhysAddr(slot0 + 8 * k), ENTRIES[kind](PAGE + 0x1000 * k))
    pages = S1Pages(m.plat, m.cpu)
    assert pages.translate(VMALLOC) == s1_translate(m.plat, m.cpu, VMALLOC, AccessType.LOAD)
    assert pages._l3, "the region's level-3 table was remembered"
    for k in range(1, 8):
        for off in (0, 0x123):
            va = VMALLOC + 0x1000 * k + off
            assert pages.translate(va) == s1_translate(m.plat, m.cpu, va, AccessType.LOAD), \
                (kind, k, hex(off))


def test_blocks_unmapped_regions_and_other_tables_use_the_full_walk() -> None:
    m, _hv = booted("hardened")
    pages = S1Pages(m.plat, m.cpu)
    for va in (lva(PAGE), lva(PAGE) + 0x1000, kva(TEXT), kva(TEXT) + 0x5000,
               VMALLOC + (64 << 21), 0x1234_5000, VMALLOC - 0x1000):
        assert pages.translate(va) == s1_translate(m.plat, m.cpu, va, AccessType.LOAD), hex(va)
    table, _slot = map_vmalloc(m, VMALLOC + (1 << 21), PAGE)  # a second region, its own table
    assert pages.translate(VMALLOC + (1 << 21)) == (PAGE, 3)
    assert pages._l3[(VMALLOC + (1 << 21)) >> 21][0] == table
