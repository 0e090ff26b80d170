"""Host memory transitions that touch both the page-usage table and stage 2.

C: sekvm/MemAux.c:map_page_host, kint/HostPageMgmt.c:get_pfn_s2_perm,
kint/HostKptCore.c:check_clear_pfn_host, kint/HostKptAux.c:handle_host_new_page /
handle_host_remove_page.

    map_page_host   (lazy fill on a stage-2 fault)
        stage 2: unmapped -> leaf of kind `desired_kind(page)` at the chosen level
    claim_table     (a page becomes a kernel/user table)
        page: owner=HOST usage=NONE -> usage=L   contents: any -> zero
        stage 2: RW/unmapped -> RO (4 KB; hardened splits a covering block first)
    release_table   (a table page goes back to the kernel)
        page: usage=L -> NONE, subcount kept   contents: -> zero
        stage 2: RO -> RW (KERNEL)

Block choice. `hardened`: the largest block (1 GiB, 2 MiB) whose pages all have the same owner
and class (and lie all inside or all outside the vDSO); a class change inside a block splits it
(make-before-break) so that only the changed page gets a new permission (INV-BLOCK). `secvma2024`
(quirk first_page_blocks, spec §2.2/§2.4): the faulting page's class decides (KCODE, DATA,
INIT, table pages in the page-table pool -> 2 MiB; default host memory -> 1 GiB outside the
"kint windows", 2 MiB inside; module pools, RODATA, other tables -> 4 KB); a slot that already
holds a table makes the request fall to the next level with `get_pfn_s2_perm` (gap 12).
Deviation (both policies): a block never covers EL2 memory or non-RAM; in C the layout alone
guarantees that (EL2 memory is a 2 MiB-aligned part of the kernel image).
"""

from __future__ import annotations

from secvma.arch.descriptors import level_size
from secvma.kpcore.bootinfo import in_module_pool, in_pgtable_pool, in_vdso
from secvma.kpcore.pages import (
    EL1_EXEC_CLASSES,
    Owner,
    Usage,
    check_claim_table,
    commit_claim_table,
    commit_release,
    pa_of,
)
from secvma.kpcore.refusal import Errno, HypPanic, HypRefusal
from secvma.kpcore.stage2 import PermKind
from secvma.kpcore.state import KState
from secvma.platform import PhysAddr, Platform

GIB_PAGES = 1 << 18
MIB2_PAGES = 1 << 9
_PAGES_AT = {1: GIB_PAGES, 2: MIB2_PAGES, 3: 1}


def desired_kind(st: KState, pfn: int, *, fallback: bool = False) -> PermKind | None:
    """Stage-2 permission of page `pfn` by owner and class (None: must never be mapped).

    `fallback` is get_pfn_s2_perm (set_npt's re-issue at a lower level), which under
    secvma2024 has no case for EL0_PGD/AUTH/MOD_* (RW) nor the vDSO (gap 12).
    """
    owner = st.pages.owner_of(pfn)
    if owner is Owner.INVALID:
        if st.dma is not None and st.dma.smmu.owns(pfn << 12):
            return None  # the SMMU belongs to the hypervisor (spec §6)
        return PermKind.DEVICE
    if owner is not Owner.HOST:
        return None
    if not st.installed:
        return PermKind.OPEN
    usage = st.pages.usage_of(pfn)
    q = st.policy.quirks
    if fallback and q.s2_fallback_rw:
        if usage.is_kpt or usage is Usage.EL1_RODATA:
            return PermKind.RO
        return {Usage.EL1_KCODE: PermKind.KCODE, Usage.EL1_DATA: PermKind.RW}.get(
            usage, PermKind.KERNEL)
    if usage in EL1_EXEC_CLASSES:
        if usage is Usage.EL1_MOD_TXT and q.s2_fallback_rw:
            return PermKind.KERNEL  # map_page_host "any other sub" row
        return PermKind.KCODE
    if usage.is_table:
        return PermKind.RO
    if usage is Usage.EL1_RODATA:
        if not in_vdso_of(st, pa_of(pfn)):
            return PermKind.RO
        # EL0 runs the vDSO; with FEAT_XNX hardened keeps EL1 from running it (C: KCODE)
        return PermKind.UCODE if st.policy.hardened else PermKind.KCODE
    if usage is Usage.EL1_DATA:
        return PermKind.RW
    if usage in (Usage.EL1_AUTH, Usage.EL1_MOD_RO):
        return PermKind.KERNEL if q.s2_fallback_rw else PermKind.RO
    if usage is Usage.EL1_INIT and st.policy.hardened:
        # init text still runs after install (the testbed's start_kernel): read-only and
        # EL1-executable until the kernel unmaps it (free_initmem), then ordinary memory
        # (`retire_init`). C maps it KERNEL (RW, EL1-XN), which a FEAT_XNX CPU cannot run.
        return PermKind.KCODE
    return PermKind.KERNEL  # NONE, INIT (secvma2024)


# --- block choice -----------------------------------------------------------------------------


def _block_homogeneous(st: KState, base_pfn: int, level: int) -> bool:
    """INV-BLOCK predicate: every page of the block has one owner, class and vDSO side."""
    n = _PAGES_AT[level]
    if st.pages.range_uniform(base_pfn, n) is None:
        return False
    lo, hi = pa_of(base_pfn), pa_of(base_pfn + n)
    for v_lo, v_hi in _vdso_ranges(st):
        if lo < v_hi and v_lo < hi and not (v_lo <= lo and hi <= v_hi):
            return False
    return True


def _vdso_ranges(st: KState) -> tuple[tuple[int, int], ...]:
    """The vDSO's PA ranges: from the boot info (testbed) or learned from the Image (stock)."""
    boot = st.boot
    if boot is not None and boot.vdso < boot.evdso:
        return ((boot.vdso, boot.evdso), *st.vdso)
    return st.vdso


def in_vdso_of(st: KState, pa: int) -> bool:
    """User space executes the vDSO: RODATA, but EL0-executable at stage 2 (UCODE; KCODE,
    executable at EL1 too, under secvma2024 as in C)."""
    boot = st.boot
    return (boot is not None and in_vdso(boot, pa)) or any(lo <= pa < hi for lo, hi in st.vdso)


def _block_safe(st: KState, base_pfn: int, level: int) -> bool:
    """A block may only cover host RAM (deviation from C, see module docstring)."""
    n = _PAGES_AT[level]
    i = st.pages.index(base_pfn)
    if i is None or st.pages.index(base_pfn + n - 1) is None:
        return False
    return st.pages.owner.count(Owner.HOST, i, i + n) == n


def _c_level(st: KState, pfn: int) -> int:
    """The level map_page_host asks for (spec §2.2), before set_npt's fallback."""
    usage = st.pages.usage_of(pfn)
    boot = st.boot
    pa = pa_of(pfn)
    if usage is Usage.EL1_KCODE or usage in (Usage.EL1_DATA, Usage.EL1_INIT):
        return 2
    if usage.is_table:
        return 2 if boot is not None and in_pgtable_pool(boot, pa) else 3
    if usage is not Usage.NONE or boot is None or in_module_pool(boot, pa):
        return 3
    windows = [(boot.text, boot.end), (boot.pgtable_pool, boot.pgtable_pool_end),
               (boot.mod_text_pool, boot.mod_ro_pool_end)]
    for lo, hi in windows:
        if lo < hi and (lo & ~(level_size(1) - 1)) <= pa < -(-hi // level_size(1)) * level_size(1):
            return 2
    return 1


def _candidate_levels(st: KState, pfn: int, kind: PermKind) -> list[int]:
    if st.policy.s2 == "4k" or kind is PermKind.DEVICE:
        return [3]
    if st.policy.quirks.first_page_blocks and st.installed:
        return list(range(_c_level(st, pfn), 4))
    return [1, 2, 3]


def map_page_host(st: KState, ipa: int) -> str:
    """Lazy stage-2 fill for `ipa`: "mapped", "present" (already mapped) or "forbidden".

    C: sekvm/MemAux.c:map_page_host + sekvm/NPTWalk.c:set_npt
    """
    pfn = ipa >> 12
    kind = desired_kind(st, pfn)
    if kind is None:
        return "forbidden"
    if st.s2.leaf(ipa) is not None:
        return "present"
    c_mode = st.policy.quirks.first_page_blocks and st.installed
    fell_back = False
    for level in _candidate_levels(st, pfn, kind):
        base = ipa & ~(level_size(level) - 1)
        base_pfn = base >> 12
        if level < 3 and kind is not PermKind.DEVICE:
            if not _block_safe(st, base_pfn, level):
                continue
            if not c_mode and not _block_homogeneous(st, base_pfn, level):
                continue
        if st.s2.has_table_below(base, level):
            fell_back = True
            continue
        if c_mode and fell_back:
            fb = desired_kind(st, pfn, fallback=True)
            kind = fb if fb is not None else kind
        st.s2.check_available(st.s2.tables_needed(base, level), rule="s2-map")
        st.s2.map_leaf(base, level, kind)
        return "mapped"
    raise AssertionError(f"no level could map {ipa:#x}")


# --- class changes --------------------------------------------------------------------------


def _apply_kind_hardened(st: KState, pfn: int) -> None:
    """Give page `pfn` its class's permission, splitting a covering block first."""
    pa = pa_of(pfn)
    hit = st.s2.leaf(pa)
    if hit is None:
        return  # filled lazily with the new permission
    kind = desired_kind(st, pfn)
    assert kind is not None
    if hit[1] < 3:
        st.s2.split_to_page(pa)
    st.s2.set_leaf(pa, 3, kind)


def _check_clear_pfn_host(st: KState, pfn: int) -> int:
    """C's code: 0 nothing, 1 1 GiB block, 2 2 MiB all-NONE block removed, 3 page removed."""
    pa = pa_of(pfn)
    hit = st.s2.leaf(pa)
    if hit is None:
        return 0
    base, level, _desc = hit
    if level == 1:
        return 1
    if level == 2:
        i = st.pages.index(base >> 12)
        assert i is not None
        if st.pages.usage.count(Usage.NONE, i, i + MIB2_PAGES) != MIB2_PAGES:
            return 0
        st.s2.unmap_leaf(base, 2)
        return 2
    st.s2.unmap_leaf(base, 3)
    return 3


def _zero(plat: Platform, pfn: int) -> None:
    plat.write(pa_of(pfn), bytes(4096))


def mark_unsettled(st: KState, pfn: int, cpu: int) -> None:
    """`pfn` was just claimed by `cpu`: until `cpu` traps again its broadcast TLB invalidation
    has not run, so another CPU can still store to the page through a stale stage-2 entry
    (issue 13, race-s2-stale: ~5e5 such stores measured during one HVC 33 under MTTCG)."""
    st.unsettled[pfn] = cpu


def settle(st: KState, plat: Platform, cpu: int) -> None:
    """At the start of each trap from `cpu`: the pages it claimed are read-only in every TLB
    now; zero them again (a claim's contents are zero: what landed since is discarded)."""
    for pfn in [p for p, c in st.unsettled.items() if c == cpu]:
        del st.unsettled[pfn]
        if st.pages.usage_of(pfn).is_table:
            _zero(plat, pfn)
            st.dirty_tables.add(pfn)


def check_claim(st: KState, pfn: int, usage: Usage, *, rule: str) -> None:
    """Check phase of `commit_claim` (refusals: see pages.check_claim_table, ENOMEM)."""
    check_claim_table(st.pages, pfn, usage, rule=rule,
                      count_checked=not st.policy.quirks.dma_count_unchecked)
    st.s2.check_available(3, rule=rule)
    if st.policy.quirks.first_page_blocks:
        hit = st.s2.leaf(pa_of(pfn))
        if hit is not None and hit[1] == 1:
            raise HypPanic(Errno.EPERM, rule, "claimed page lies in a 1 GiB stage-2 block",
                           pfn=pfn)


def commit_claim(st: KState, plat: Platform, pfn: int, usage: Usage) -> None:
    """owner=HOST usage=NONE -> usage; stage 2 -> RO; contents -> zero.

    C: kint/HostKptAux.c:handle_host_new_page
    """
    if st.policy.quirks.first_page_blocks:
        code = _check_clear_pfn_host(st, pfn)
        assert code != 1
        commit_claim_table(st.pages, pfn, usage)
        if code in (2, 3):
            pa = pa_of(pfn)
            boot = st.boot
            if boot is not None and in_pgtable_pool(boot, pa) and st.policy.s2 == "huge" \
                    and code == 2 and _block_safe(st, pfn & ~(MIB2_PAGES - 1), 2):
                st.s2.map_leaf(pa & ~(level_size(2) - 1), 2, PermKind.RO)
            else:
                st.s2.map_leaf(pa, 3, PermKind.RO)
    else:
        commit_claim_table(st.pages, pfn, usage)
        _apply_kind_hardened(st, pfn)
    _zero(plat, pfn)
    st.dirty_tables.add(pfn)


def commit_release_page(st: KState, plat: Platform, pfn: int) -> Usage:
    """usage=L -> NONE (subcount kept), contents -> zero, stage 2 -> RW.

    C: kint/HostKptAux.c:handle_host_remove_page
    """
    old = commit_release(st.pages, pfn)
    _zero(plat, pfn)
    if st.policy.quirks.first_page_blocks:
        if old not in (Usage.EL1_MOD_TXT, Usage.EL1_MOD_RO):
            code = _check_clear_pfn_host(st, pfn)
            pa = pa_of(pfn)
            if code == 2 and _block_safe(st, pfn & ~(MIB2_PAGES - 1), 2):
                st.s2.map_leaf(pa & ~(level_size(2) - 1), 2, PermKind.KERNEL)
            elif code in (2, 3):
                st.s2.map_leaf(pa, 3, PermKind.KERNEL)
    else:
        _apply_kind_hardened(st, pfn)
    return old


def retire_init(st: KState, pfn: int) -> None:
    """hardened: the last kernel mapping of an init-text page went away (free_initmem): it is
    ordinary memory again (stage 2: KERNEL, RW and EL1-non-executable with FEAT_XNX)."""
    if st.policy.hardened and st.pages.usage_of(pfn) is Usage.EL1_INIT:
        set_class(st, pfn, Usage.NONE)


def set_class(st: KState, pfn: int, usage: Usage) -> None:
    """Module/boot helper: change a host page's class and its stage-2 permission (hardened)."""
    i = st.pages.index(pfn)
    if i is None or st.pages.owner[i] != Owner.HOST:
        raise HypRefusal(Errno.EPERM, "set-class", "not a host page", pfn=pfn)
    st.pages._set_usage(pfn, usage)
    _apply_kind_hardened(st, pfn)


__all__ = [
    "PhysAddr",
    "check_claim",
    "commit_claim",
    "commit_release_page",
    "desired_kind",
    "map_page_host",
    "mark_unsettled",
    "retire_init",
    "set_class",
    "settle",
]
