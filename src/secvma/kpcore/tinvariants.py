"""The invariants of transparent mode (`TransparentKPCore`) as one function, once armed.

    T-KPT-RO    kernel table pages and user roots are never writable at stage 2
    T-CODE-RO   kernel text, rodata and module text (authenticated or being authenticated)
                pages are never writable at stage 2
    T-S2-WX     no stage-2 leaf is writable and EL1-executable; an EL1-executable leaf (XN read
                with FEAT_XNX semantics) maps only kernel or authenticated module text
    T-ROOTS     the learned roots are EL1_PGD pages, reserved_pg_dir is empty; every CPU's
                TTBR1 base is a learned root and its TTBR0 base is a kernel TTBR0 root
                (reserved, idmap) or a validated user root
    T-USER      every validated user root is an EL0_PGD page whose non-zero entries are table
                descriptors with PXNTable
    T-LINKS     (full) every table link in the kernel tables points at a page of the next
                level's class, and the link counts equal the links found
    T-PXN       (full) every EL1-executable kernel leaf maps kernel or authenticated module text
    T-MOD       (full) every module text page is one the hypervisor authenticated, and its bytes
                are the ones it computed except at the module's declared patch sites
    T-TEXT      (full) kernel text equals the Image except at declared patch sites, with
                allowed words
    INV-DMA     (with the SMMU; also before arming) no page with a usage class or of the
                hypervisor is reachable by a device: the identity map's record and its IO
                table entries of every page whose class changed since the last call
                (`invariants.check_dma`)

`check(hv, plat, full=False)` looks at the stage-2 leaves changed since the last call and the
roots; `full=True` walks every table from the roots and diffs text against the Image.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from secvma.kpcore import invariants
from secvma.kpcore.descs import PXN, PXNTABLE, Shape, out_pa, shape
from secvma.kpcore.invariants import Violation
from secvma.kpcore.pages import KPT_BY_LEVEL, Usage
from secvma.kpcore.stage2 import kind_of
from secvma.kpcore.textsites import patch_kind, relocated
from secvma.platform import PhysAddr, Platform

if TYPE_CHECKING:
    from secvma.kpcore.transparent import TransparentKPCore

TABLE_CLASSES = (Usage.EL1_PGD, Usage.EL1_PUD, Usage.EL1_PMD, Usage.EL1_PTE, Usage.EL0_PGD)
RO_CLASSES = (Usage.EL1_KCODE, Usage.EL1_RODATA, Usage.EL1_MOD_TXT, Usage.EL1_MOD_RO)
PAGE = 0x1000


def _leaves(hv: TransparentKPCore, full: bool) -> list[tuple[int, int, int]]:
    s2 = hv.state.s2
    if full:
        bases = list(s2.leaves)
    else:
        bases = list(s2.dirty_leaves)
        s2.dirty_leaves.clear()
    out = []
    for base in bases:
        hit = s2.leaves.get(base)
        if hit is not None:
            out.append((base, hit[0], hit[1]))
    return out


def _check_leaf(hv: TransparentKPCore, base: int, level: int, desc: int,
                out: list[Violation]) -> None:
    st = hv.state
    kind = kind_of(desc)
    if kind is None:
        out.append(Violation("T-S2-WX", f"foreign stage-2 leaf {desc:#x} at {base:#x}"))
        return
    n = {1: 1 << 18, 2: 512, 3: 1}[level]
    i = st.pages.index(base >> 12)
    if i is None:
        return
    u = st.pages.usage
    if kind.writable:
        for cls in (*TABLE_CLASSES, *RO_CLASSES):
            if u.count(cls, i, i + n):
                inv = "T-KPT-RO" if cls in TABLE_CLASSES else "T-CODE-RO"
                out.append(Violation(inv, f"{cls.name} page writable at stage 2 in the "
                                          f"{level}-level leaf {base:#x}"))
        if kind.exec_el1:
            out.append(Violation("T-S2-WX", f"leaf {base:#x} is writable and EL1-executable"))
    elif kind.exec_el1 and u.count(Usage.EL1_KCODE, i, i + n) \
            + u.count(Usage.EL1_MOD_TXT, i, i + n) != n:
        # the vDSO is UCODE (EL0-executable only): no exception for it any more
        out.append(Violation("T-S2-WX", f"EL1-executable leaf {base:#x} maps pages that are "
                                        "not kernel text"))


def _check_roots(hv: TransparentKPCore, plat: Platform, out: list[Violation]) -> None:
    st = hv.state
    ln = hv.learned
    for root in ln.roots:
        if st.pages.usage_of(root >> 12) is not Usage.EL1_PGD:
            out.append(Violation("T-ROOTS", f"root {root:#x} is "
                                            f"{st.pages.usage_of(root >> 12).name}"))
    for root in ln.empty_roots:
        if any(plat.read(PhysAddr(root), PAGE)):
            out.append(Violation("T-ROOTS", f"reserved_pg_dir {root:#x} is not empty"))
    for idx, c in hv.cpus.items():
        if c.ttbr0 and c.ttbr0 not in ln.ttbr0_kernel and c.ttbr0 not in hv.roots.valid \
                and c.ttbr0 not in hv.roots.pending:
            out.append(Violation("T-ROOTS", f"cpu{idx} runs on unvalidated TTBR0 {c.ttbr0:#x}"))
    for root in hv.roots.valid:
        if st.pages.usage_of(root >> 12) is not Usage.EL0_PGD:
            out.append(Violation("T-USER", f"user root {root:#x} is not write-protected"))
            continue
        raw = plat.read(PhysAddr(root), PAGE)
        for k in range(512):
            e = int.from_bytes(raw[8 * k:8 * k + 8], "little")
            if e and (e & 3 != 3 or not e & PXNTABLE):
                out.append(Violation("T-USER", f"user root {root:#x}[{k}] = {e:#x}"))


def _check_tables(hv: TransparentKPCore, plat: Platform, out: list[Violation]) -> None:
    """Walk every kernel table from the roots: link classes, counts and PXN."""
    st = hv.state
    ln = hv.learned
    links: Counter[int] = Counter()
    seen: set[int] = set()
    todo = [(r, 0) for r in sorted(ln.roots | (ln.ttbr0_kernel - ln.empty_roots))
            if st.is_host_ram(r)]
    while todo:
        table, level = todo.pop()
        if table in seen:
            continue
        seen.add(table)
        want = KPT_BY_LEVEL[level]
        if st.pages.usage_of(table >> 12) is not want:
            out.append(Violation("T-LINKS", f"L{level} table {table:#x} is "
                                            f"{st.pages.usage_of(table >> 12).name}"))
            continue
        raw = plat.read(PhysAddr(table), PAGE)
        for k in range(512):
            e = int.from_bytes(raw[8 * k:8 * k + 8], "little")
            sh = shape(e, level, any_nonzero=False)
            if sh is Shape.TABLE:
                child = out_pa(e, level, sh)
                links[child >> 12] += 1
                if e & PXNTABLE:
                    continue  # nothing below is EL1-executable; still a protected table
                todo.append((child, level + 1))
            elif sh is Shape.LEAF and not e & PXN:
                pa = out_pa(e, level, sh)
                n = {1: 1 << 18, 2: 512, 3: 1}[level]
                i = st.pages.index(pa >> 12)
                u = st.pages.usage
                if i is None or u.count(Usage.EL1_KCODE, i, i + n) \
                        + u.count(Usage.EL1_MOD_TXT, i, i + n) != n:
                    out.append(Violation("T-PXN", f"executable leaf {e:#x} in {table:#x}[{k}] "
                                                  "maps memory that is not kernel text"))
    for pfn, n in links.items():
        if hv.tlinks.get(pfn, 0) < n and st.pages.usage_of(pfn).is_kpt:
            out.append(Violation("T-LINKS", f"table {pfn << 12:#x} has {n} links, "
                                            f"{hv.tlinks.get(pfn, 0)} counted"))


def _check_text(hv: TransparentKPCore, plat: Platform, out: list[Violation]) -> None:
    st = hv.state
    image, sites, rng = hv.image, hv.sites, hv.learned.image
    if image is None or sites is None or rng is None:
        return
    for pfn in st.pages.pages_of(Usage.EL1_KCODE):
        off = (pfn << 12) - rng[0]
        if not 0 <= off <= len(image) - PAGE:
            continue
        live = plat.read(PhysAddr(pfn << 12), PAGE)
        orig = image[off:off + PAGE]
        if live == orig:
            continue
        for k in range(0, PAGE, 4):
            if live[k:k + 4] != orig[k:k + 4]:
                word = int.from_bytes(live[k:k + 4], "little")
                was = int.from_bytes(orig[k:k + 4], "little")
                slot = (pfn << 12) + (k & ~7)
                if patch_kind(sites, off + k, was, word) is None and not relocated(
                        sites, off + k, plat.read(PhysAddr(slot), 8)):
                    out.append(Violation("T-TEXT", f"text word {(pfn << 12) + k:#x} = "
                                                   f"{word:#x} is no declared patch"))


def _check_modules(hv: TransparentKPCore, plat: Platform, out: list[Violation]) -> None:
    st = hv.state
    for pfn in st.pages.pages_of(Usage.EL1_MOD_TXT):
        got = hv.mod_pages.get(pfn)
        if got is None:
            out.append(Violation("T-MOD", f"module text page {pfn << 12:#x} was never "
                                          "authenticated"))
            continue
        va, rec = got
        region = next(((w, r) for w, r in (("core", rec.core), ("init", rec.init))
                       if r is not None and r.base <= va < r.base + r.size), None)
        if hv.modules is None or region is None or rec.sites is None \
                or region[0] not in rec.expected:
            out.append(Violation("T-MOD", f"module text page {pfn << 12:#x} ({rec.name}) has "
                                          "no authenticated region"))
            continue
        off = va - region[1].base
        want = rec.expected[region[0]][off:off + PAGE]
        live = plat.read(PhysAddr(pfn << 12), PAGE)
        tramp = sorted(rec.sites.plt_slots)[:1]
        for k in range(0, len(want), 4):
            if live[k:k + 4] != want[k:k + 4] and not hv.modules.word_allowed(
                    va + k, int.from_bytes(live[k:k + 4], "little"), rec.sites, tramp,
                    live=live, base=va):
                out.append(Violation("T-MOD", f"{rec.name} text word {va + k:#x} changed "
                                              "outside its declared patch sites"))
                break


def check(hv: TransparentKPCore, plat: Platform, *, full: bool = False) -> list[Violation]:
    """Every broken invariant of the module table (empty list: all hold)."""
    st = hv.state
    out: list[Violation] = invariants.check_dma(st, plat, full=full)
    st.pages.dirty.clear()
    if not hv.armed:
        return out
    for base, level, desc in _leaves(hv, full):
        _check_leaf(hv, base, level, desc, out)
    _check_roots(hv, plat, out)
    if full:
        _check_tables(hv, plat, out)
        _check_text(hv, plat, out)
        _check_modules(hv, plat, out)
    return out


__all__ = ["check"]
