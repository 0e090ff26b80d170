"""The invariants of spec §9 as one function over `KState` (+ guest memory for table contents).

    INV-EL2      no stage-2 leaf covers a COREVISOR page
    INV-KPT-RO   table pages (EL1_PGD..PTE, EL0_PGD) are never writable at stage 2
    INV-CODE-RO  KCODE, RODATA, AUTH, MOD_txt pages are never writable at stage 2
    INV-S2-WX    no leaf is W and EL1-X (XN read with FEAT_XNX semantics); an EL1-X leaf maps
                 only KCODE / MOD_txt / vDSO pages
    INV-TYPE     a table entry in a level-L kernel table points at a class L+1 page
    INV-PXN      a kernel leaf with PXN clear maps only KCODE / MOD_txt (INIT at PTE level)
    INV-USER     every non-zero user-PGD entry has PXNTable
    INV-ROOTS    CPUs that ran HVC 6 keep TVM, TTBR1 = swapper, TTBR0 = zero page / EL0_PGD
                 (outside their boot window); pinned registers only ever get pinned values
    INV-COUNT    subcount = table links + PTE-level leaves referencing the page (hardened
                 only: the C code does not maintain it, spec §11 gaps 16/17)
    INV-BLOCK    every stage-2 block covers pages of one owner and class (hardened only)
    INV-MOD      no AUTH page outside an HVC 30; MOD_txt pages are exactly the text pages of
                 loaded modules (never writable at stage 2: INV-CODE-RO; the only EL1-X
                 pages besides KCODE: INV-S2-WX / INV-PXN) and hold the bytes EL2 installed
                 (full check); MOD_ro pages belong to loaded modules (secvma2024: or await
                 the kernel's unmap, spec §7.5) and are read-only at stage 2 (hardened)

    INV-DMA      no page with a usage class or of the hypervisor is reachable from any device
                 table: a page with a DMA count is a host NONE page; full check: the IO page
                 tables walked in memory equal the driver's record, every leaf is MMIO
                 (not the SMMU) or a host NONE page, counts equal the leaves, every valid STE
                 is a context of the driver (vacuous without an SMMU)

INV-VM holds vacuously here (no VMs). INV-ZERO holds by construction:
`hostmem.commit_claim` and `commit_release_page` are the only class changes of table pages
after boot, and both zero.

`check(st, plat, full=False)` looks only at what changed since the last call (dirty leaves,
pages and tables); `full=True` re-checks everything and recounts references.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter
from dataclasses import dataclass

from secvma.kpcore.descs import PXN, PXNTABLE, Shape, leaf_pages, out_pa, shape
from secvma.kpcore.hostmem import _block_homogeneous, in_vdso_of
from secvma.kpcore.pages import EL1_EXEC_CLASSES, KPT_BY_LEVEL, Owner, Usage
from secvma.kpcore.stage2 import PermKind, kind_of
from secvma.kpcore.state import KState
from secvma.kpcore.sysregs import TTBR_BADDR
from secvma.platform import GuestMemoryError, PhysAddr, Platform

KPT_RO = (Usage.EL1_PGD, Usage.EL1_PUD, Usage.EL1_PMD, Usage.EL1_PTE, Usage.EL0_PGD)
CODE_RO = (Usage.EL1_KCODE, Usage.EL1_RODATA, Usage.EL1_AUTH, Usage.EL1_MOD_TXT)


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: its name and what broke it."""

    inv: str
    detail: str

    def __str__(self) -> str:
        return f"{self.inv}: {self.detail}"


def _leaf(st: KState, base: int, level: int, desc: int, out: list[Violation]) -> None:
    kind = kind_of(desc)
    n = leaf_pages(level)
    pages = st.pages
    i = pages.index(base >> 12)
    if i is None:
        return  # MMIO
    j = min(i + n, pages.npages)
    if pages.owner.count(Owner.COREVISOR, i, j):
        out.append(Violation("INV-EL2", f"leaf {base:#x} L{level} covers EL2 memory"))
    if kind is None or not st.installed:
        return
    if kind.writable:
        for cls in KPT_RO + CODE_RO:
            if pages.usage.count(cls, i, j):
                inv = "INV-KPT-RO" if cls in KPT_RO else "INV-CODE-RO"
                out.append(Violation(inv, f"{cls.name} page writable via leaf {base:#x} "
                                          f"L{level} ({kind.name})"))
                break
    if kind.exec_el1:
        if kind.writable:
            out.append(Violation("INV-S2-WX", f"leaf {base:#x} is W and EL1-X"))
        u = pages.usage
        ok = u.count(Usage.EL1_KCODE, i, j) + u.count(Usage.EL1_MOD_TXT, i, j)
        # hardened: init text still mapped by the kernel is read-only and EL1-executable
        exec_ok = EL1_EXEC_CLASSES | ({Usage.EL1_INIT} if st.policy.hardened else set())
        if ok != j - i:
            bad = [p for p in range(i, j) if Usage(u[p]) not in exec_ok
                   and not (not st.policy.hardened  # hardened: the vDSO is UCODE (EL0 only)
                            and in_vdso_of(st, (pages.base_pfn + p) << 12))]
            if bad:
                out.append(Violation("INV-S2-WX", f"leaf {base:#x} makes "
                                     f"{Usage(u[bad[0]]).name} page EL1-executable"))
    if level < 3 and st.policy.hardened and kind is not PermKind.DEVICE \
            and not _block_homogeneous(st, base >> 12, level):
        out.append(Violation("INV-BLOCK", f"block {base:#x} L{level} is not homogeneous"))


def _table(st: KState, plat: Platform, pfn: int, refs: Counter[int] | None,
           out: list[Violation]) -> None:
    usage = st.pages.usage_of(pfn)
    if pfn in st.unsettled:  # zeroed again when its claimer's TLB invalidation has run
        return
    try:
        entries = struct.unpack("<512Q", plat.read(PhysAddr(pfn << 12), 4096))
    except (GuestMemoryError, ValueError):
        out.append(Violation("INV-TYPE", f"table page {pfn << 12:#x} unreadable"))
        return
    if usage is Usage.EL0_PGD:
        for k, e in enumerate(entries):
            if e and not e & PXNTABLE:
                out.append(Violation("INV-USER", f"user PGD {pfn << 12:#x}[{k}] lacks PXNTable"))
                return
        return
    if not usage.is_kpt:
        return
    level = usage.kpt_level
    any_nz = st.policy.quirks.boot_walk_any_nonzero
    for k, e in enumerate(entries):
        sh = shape(e, level, any_nonzero=any_nz)
        if sh in (Shape.EMPTY, Shape.MALFORMED):
            continue
        target = out_pa(e, level, sh)
        if refs is not None and (sh is Shape.TABLE or level == 3):
            refs[target >> 12] += 1
        where = f"{pfn << 12:#x}[{k}] (L{level})"
        if sh is Shape.TABLE:
            got = st.pages.usage_of(target >> 12)
            if got is not KPT_BY_LEVEL[level + 1]:
                out.append(Violation("INV-TYPE", f"{where} links a {got.name} page "
                                     f"{target:#x}"))
        elif level > 0 and not e & PXN:
            _pxn(st, target, level, where, out)


def _pxn(st: KState, target: int, level: int, where: str, out: list[Violation]) -> None:
    allowed = set(EL1_EXEC_CLASSES) | ({Usage.EL1_INIT} if level == 3 else set())
    for p in range(target >> 12, (target >> 12) + leaf_pages(level)):
        got = st.pages.usage_of(p)
        if got not in allowed:
            out.append(Violation("INV-PXN", f"{where} maps {got.name} page {p << 12:#x} "
                                 "with PXN clear"))
            return


def _roots(st: KState, out: list[Violation]) -> None:
    boot = st.boot
    if boot is None:
        return
    for idx, c in st.cpus.items():
        if not c.enabled_once:
            continue
        if not c.tvm:
            out.append(Violation("INV-ROOTS", f"cpu{idx}: HCR_EL2.TVM off after install"))
        if c.ttbr1 and (c.ttbr1 & TTBR_BADDR) != boot.swapper_pg_dir:
            out.append(Violation("INV-ROOTS", f"cpu{idx}: TTBR1 {c.ttbr1:#x} not swapper"))
        base0 = c.ttbr0 & TTBR_BADDR
        if c.switched and base0 != boot.empty_zero_page \
                and st.pages.usage_of(base0 >> 12) is not Usage.EL0_PGD:
            out.append(Violation("INV-ROOTS", f"cpu{idx}: TTBR0 {c.ttbr0:#x} not a user PGD"))


def check(st: KState, plat: Platform, *, full: bool = False) -> list[Violation]:
    """Every invariant over the state (only what changed unless `full`); clears dirty sets."""
    out: list[Violation] = []
    s2 = st.s2
    if full:
        leaves = list(s2.iter_leaves())
    else:
        leaves = []
        for base in sorted(s2.dirty_leaves):
            hit = s2.leaves.get(base)
            if hit is not None:
                leaves.append((base, hit[0], hit[1]))
        for pfn in sorted(st.pages.dirty):
            hit3 = s2.leaf(pfn << 12)
            if hit3 is not None:
                leaves.append(hit3)
    seen: set[int] = set()
    for base, level, desc in leaves:
        if base not in seen:
            seen.add(base)
            _leaf(st, base, level, desc, out)
    if st.installed:
        refs: Counter[int] | None = Counter() if full and st.policy.hardened else None
        if full:
            tables: list[int] = [p for cls in KPT_RO for p in st.pages.pages_of(cls)]
        else:
            tables = sorted(p for p in st.dirty_tables | st.pages.dirty
                            if st.pages.usage_of(p).is_table)
        for pfn in tables:
            _table(st, plat, pfn, refs, out)
        if refs is not None and st.boot is not None:
            refs[st.boot.swapper_pg_dir >> 12] += 1
            _count(st, refs, out)
        _roots(st, out)
        _modules(st, plat, full, out)
    if st.dma is not None:
        _dma(st, plat, full, out)
    s2.dirty_leaves.clear()
    st.pages.dirty.clear()
    st.dirty_tables.clear()
    return out


def _count(st: KState, refs: Counter[int], out: list[Violation]) -> None:
    sub = st.pages.subcount
    nz = {i for i in range(st.pages.npages) if sub[i]} if st.pages.npages < (1 << 22) else set()
    for pfn, n in refs.items():
        i = st.pages.index(pfn)
        if i is None:
            continue
        nz.discard(i)
        if sub[i] != n:
            out.append(Violation("INV-COUNT", f"page {pfn << 12:#x}: subcount {sub[i]}, "
                                 f"{n} references"))
    for i in sorted(nz)[:8]:
        out.append(Violation("INV-COUNT", f"page {(st.pages.base_pfn + i) << 12:#x}: "
                             f"subcount {sub[i]}, 0 references"))


def _modules(st: KState, plat: Platform, full: bool, out: list[Violation]) -> None:
    """INV-MOD (see the module table)."""
    mod = st.mod
    pages = st.pages
    if not mod.in_progress and pages.usage.find(bytes([Usage.EL1_AUTH])) >= 0:
        auth = pages.pages_of(Usage.EL1_AUTH)[0]
        out.append(Violation("INV-MOD", f"AUTH page {auth << 12:#x} outside a module load"))
    text: set[int] = set()
    ro: set[int] = set()
    for m in mod.loaded.values():
        text |= m.text_pfns()
        ro |= m.ro_pfns()
    actual: set[int] = set(pages.pages_of(Usage.EL1_MOD_TXT))
    for p in sorted(actual ^ text)[:4]:
        what = "is MOD_txt but no loaded module's text" if p in actual else \
            f"is module text but {pages.usage_of(p).name}"
        out.append(Violation("INV-MOD", f"page {p << 12:#x} {what}"))
    mod.orphan_ro &= set(pages.pages_of(Usage.EL1_MOD_RO)) if mod.orphan_ro else set()
    actual_ro: set[int] = set(pages.pages_of(Usage.EL1_MOD_RO))
    for p in sorted((actual_ro - ro - mod.orphan_ro) | (ro - actual_ro))[:4]:
        out.append(Violation("INV-MOD", f"page {p << 12:#x} is {pages.usage_of(p).name}: "
                             "MOD_ro pages and loaded modules' ro pages differ"))
    if st.policy.hardened:
        for p in sorted(ro):
            hit = st.s2.leaf(p << 12)
            kind = kind_of(hit[2]) if hit is not None else None
            if kind is not None and kind.writable:
                out.append(Violation("INV-MOD", f"MOD_ro page {p << 12:#x} writable at stage 2"))
                break
    if full:
        for m in mod.loaded.values():
            live = dict(m.text) if m.init_freed else {**m.text, **m.init_text}
            for va, pa in live.items():
                want = m.digests.get(va)
                if want is not None and hashlib.sha256(
                        plat.read(PhysAddr(pa), 4096)).digest() != want:
                    out.append(Violation("INV-MOD", f"module {m.name} text page {va:#x} "
                                         "differs from the bytes EL2 installed"))


def check_dma(st: KState, plat: Platform, *, full: bool = False) -> list[Violation]:
    """INV-DMA alone (transparent mode's `--check-invariants` runs it after every trap); looks
    at the pages changed since the last call unless `full` (the caller clears `pages.dirty`)."""
    out: list[Violation] = []
    if st.dma is not None:
        _dma(st, plat, full, out)
    return out


def _dma(st: KState, plat: Platform, full: bool, out: list[Violation]) -> None:
    """INV-DMA (see the module table)."""
    from secvma.arch.smmuv3 import IOVA_BITS, STE_SIZE, decode_ste
    from secvma.kpcore.smmu import NSTREAMS

    dma = st.dma
    assert dma is not None
    pages = st.pages
    ident = dma.identity
    smmu = dma.smmu
    pfns = range(pages.base_pfn, pages.base_pfn + pages.npages) if full else sorted(pages.dirty)
    for pfn in pfns:
        reachable = ident.is_mapped(pfn) if ident is not None else pages.count_of(pfn) > 0
        if reachable and (pages.owner_of(pfn) is not Owner.HOST
                          or pages.usage_of(pfn) is not Usage.NONE):
            out.append(Violation("INV-DMA", f"page {pfn << 12:#x} ({pages.usage_of(pfn).name}, "
                                 f"owner {pages.owner_of(pfn).name}) is reachable by DMA"))
        if ident is not None and not full and pfn << 12 < 1 << IOVA_BITS:
            # the table in memory, not only the record: a leaf the hook failed to clear
            hit = smmu.lookup(ident.ctx, pfn << 12)
            if (hit is not None) != ident.is_mapped(pfn) or (hit is not None and hit[0] != pfn << 12):
                out.append(Violation("INV-DMA", f"identity map: the IO table's entry for "
                                     f"{pfn << 12:#x} ({hit}) differs from the record "
                                     f"(mapped: {ident.is_mapped(pfn)})"))
    if not full:
        return
    counts: Counter[int] = Counter()
    if ident is not None:
        walked = {i: p for i, p in smmu.mappings(ident.ctx) if p not in ident.msi or i != p}
        for iova, pa in walked.items():
            if iova != pa or not ident.is_mapped(pa >> 12):
                out.append(Violation("INV-DMA", f"identity map: {iova:#x} -> {pa:#x} not "
                                     "recorded as an ordinary page"))
        if len(walked) != sum(ident.mapped):
            out.append(Violation("INV-DMA", f"identity map holds {len(walked)} pages, "
                                 f"record says {sum(ident.mapped)}"))
    else:
        for sid, ctx in smmu.contexts.items():
            walked = dict(smmu.mappings(ctx))
            if walked != dma.maps.get(sid, {}):
                out.append(Violation("INV-DMA", f"stream {sid}: IO page table differs from "
                                     f"the driver's record ({len(walked)} vs "
                                     f"{len(dma.maps.get(sid, {}))} pages)"))
            for iova, pa in walked.items():
                counts[pa >> 12] += 1
                if smmu.owns(pa):
                    out.append(Violation("INV-DMA", f"stream {sid} maps the SMMU itself at "
                                         f"{iova:#x}"))
        for pfn, n in counts.items():
            if pages.index(pfn) is not None and pages.count_of(pfn) != n:
                out.append(Violation("INV-DMA", f"page {pfn << 12:#x}: count "
                                     f"{pages.count_of(pfn)} but {n} device mapping(s)"))
    raw = plat.read(PhysAddr(smmu.ste_pa(0)), NSTREAMS * STE_SIZE)
    for sid in range(NSTREAMS):
        ste = decode_ste(raw[sid * STE_SIZE:(sid + 1) * STE_SIZE])
        if ste.valid and (sid not in smmu.contexts or ste.cd_pa != smmu.cd_pa(sid)):
            out.append(Violation("INV-DMA", f"stream {sid} has a valid STE the hypervisor did "
                                 "not write"))
