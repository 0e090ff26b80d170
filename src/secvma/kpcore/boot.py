"""Boot classification on the first HVC 6 (spec §1.4).

C: kint/el1_kpt.c:init_el1_pts, init_text/init_data/init_init_sec/init_rodata,
walk_and_set_el1_pt / _pud / _pmd, check_if_pte.

    page (section)       usage NONE -> KCODE / DATA / INIT / RODATA (never over a table class)
    swapper, tramp       any -> EL1_PGD, subcount +1
    reachable tables     any -> EL1_PUD / EL1_PMD / EL1_PTE (host pages only), subcount +1
    leaves               PXN set unless the target is KCODE (PTE: KCODE or INIT, which get UXN);
                         PTE targets subcount +1 (blocks are not counted, as in C)

Check, then commit: `plan_boot` walks the tables read-only and returns a `BootPlan` (table pages
with levels, references, descriptor fixes); `hardened` refuses to install when the tables are
inconsistent (a table outside host RAM, one page used at two levels); `commit_boot` applies it.
Quirk boot_walk_any_nonzero (gap 16): any non-zero entry is a table/leaf and the PUD-block
KCODE test reads the table page's address instead of the block's.
"""

from __future__ import annotations

import struct
from array import array
from collections import Counter
from dataclasses import dataclass, field

from secvma.hvabi import BootInfo
from secvma.kpcore.bootinfo import TRAMP_PG_DIR
from secvma.kpcore.descs import PXN, UXN, Shape, leaf_pages, out_pa, shape
from secvma.kpcore.pages import (
    KPT_BY_LEVEL,
    Owner,
    Usage,
    commit_classify,
    pfn_of,
    ref_inc,
)
from secvma.kpcore.refusal import Errno, HypRefusal
from secvma.kpcore.state import KState
from secvma.platform import GuestMemoryError, PhysAddr, Platform

RULE = "boot-walk"


@dataclass
class BootPlan:
    """What `commit_boot` will do."""

    sections: list[tuple[int, int, Usage]] = field(default_factory=list)
    tables: dict[int, int] = field(default_factory=dict)  # pfn -> level
    refs: Counter[int] = field(default_factory=Counter)
    fixes: list[tuple[int, int]] = field(default_factory=list)  # (slot pa, new value)
    problems: list[str] = field(default_factory=list)


def _read_table(plat: Platform, pa: int) -> tuple[int, ...] | None:
    try:
        return struct.unpack("<512Q", plat.read(PhysAddr(pa), 4096))
    except (GuestMemoryError, ValueError):
        return None


def _all_class(st: KState, plan: BootPlan, pa: int, npages: int, classes: set[Usage]) -> bool:
    """Every page of [pa, pa + npages pages) will be in `classes` after the section pass."""
    for pfn in range(pa >> 12, (pa >> 12) + npages):
        if st.pages.index(pfn) is None or _section_class(plan, pfn) not in classes:
            return False
    return True


def _section_class(plan: BootPlan, pfn: int) -> Usage:
    pa = pfn << 12
    cls = Usage.NONE
    for lo, hi, usage in plan.sections:
        if lo <= pa < hi:
            cls = usage
    return cls


def _walk(st: KState, plat: Platform, plan: BootPlan, table_pa: int, level: int) -> None:
    any_nz = st.policy.quirks.boot_walk_any_nonzero
    entries = _read_table(plat, table_pa)
    if entries is None:
        plan.problems.append(f"L{level} table {table_pa:#x} unreadable")
        return
    for i, raw in enumerate(entries):
        sh = shape(raw, level, any_nonzero=any_nz)
        if sh in (Shape.EMPTY, Shape.MALFORMED):
            continue
        slot = table_pa + 8 * i
        target = out_pa(raw, level, sh)
        if sh is Shape.TABLE:
            _visit_table(st, plat, plan, target, level + 1)
            continue
        if level == 3:
            cls = _section_class(plan, target >> 12)
            new = raw | (UXN if cls in (Usage.EL1_KCODE, Usage.EL1_INIT) else PXN)
            plan.refs[target >> 12] += 1
        else:
            probe = table_pa if any_nz and level == 1 else target  # gap 16: wrong address
            whole_code = _all_class(st, plan, probe, leaf_pages(level), {Usage.EL1_KCODE})
            new = raw if whole_code or raw & PXN else raw | PXN  # blocks are not counted
        if new != raw:
            plan.fixes.append((slot, new))


def _visit_table(st: KState, plat: Platform, plan: BootPlan, pa: int, level: int) -> None:
    pfn = pa >> 12
    if st.pages.owner_of(pfn) is not Owner.HOST:
        plan.problems.append(f"L{level} table {pa:#x} is not host RAM")
        if st.policy.quirks.boot_walk_any_nonzero:
            return
    plan.refs[pfn] += 1
    seen = plan.tables.get(pfn)
    if seen is not None:
        if seen != level:
            plan.problems.append(f"table {pa:#x} used at L{seen} and L{level}")
        return
    plan.tables[pfn] = level
    if level < 3:
        _walk(st, plat, plan, pa, level)
    else:
        _walk(st, plat, plan, pa, 3)


def plan_boot(st: KState, plat: Platform, boot: BootInfo) -> BootPlan:
    """Check phase: read the kernel's tables, decide every class and fix (nothing written)."""
    plan = BootPlan()
    plan.sections = [(boot.text, boot.etext, Usage.EL1_KCODE),
                     (boot.data, boot.end, Usage.EL1_DATA),
                     (boot.inittext, boot.einittext, Usage.EL1_INIT),
                     (boot.rodata, boot.erodata, Usage.EL1_RODATA),
                     (boot.empty_zero_page, boot.empty_zero_page + 4096, Usage.EL1_RODATA)]
    roots = [boot.swapper_pg_dir] + ([TRAMP_PG_DIR] if TRAMP_PG_DIR else [])
    for root in roots:
        _visit_table(st, plat, plan, root, 0)
    if plan.problems and not st.policy.quirks.boot_walk_any_nonzero:
        raise HypRefusal(Errno.EINVAL, RULE, "kernel tables inconsistent: "
                         + "; ".join(plan.problems[:4]), problems=len(plan.problems))
    return plan


def commit_boot(st: KState, plat: Platform, plan: BootPlan) -> None:
    """Commit phase: reset KINT metadata, classify sections and tables, write the fixes."""
    pages = st.pages
    pages.usage[:] = bytes(pages.npages)  # EL2 pages are NONE already: reset all classes
    pages.subcount = array("I", bytes(4 * pages.npages))
    pages.dirty.clear()
    for lo, hi, usage in plan.sections:
        for pfn in range(pfn_of(lo), pfn_of(hi)):
            commit_classify(pages, pfn, usage, overwrite=False)
    for pfn, level in plan.tables.items():
        commit_classify(pages, pfn, KPT_BY_LEVEL[level], overwrite=True)
        st.dirty_tables.add(pfn)
    for pfn, n in plan.refs.items():
        for _ in range(n):
            ref_inc(pages, pfn)
    for slot, new in plan.fixes:
        plat.write_u64(PhysAddr(slot), new)
