"""The page-usage table: owner, usage class and reference counts per 4 KB page of RAM.

C: asm/hypsec_mmu.h:struct s2_page, kint/HostPageMgmt.c, sekvm/PageIndex.c:get_s2_page_index.

Storage is four compact arrays indexed by `(pa - ram_base) >> 12` (no numpy): owner and usage
one byte each, `subcount` and `count` u32 (`array('I')`). 64 GiB of RAM = 16 Mi pages = 160 MiB;
the arrays are sized to the actual RAM. Pages outside RAM have owner INVALID (MMIO) and are
never stored.

Owner x usage x host stage-2 permission (illegal cells name the invariant that forbids them)::

    owner      usage                      host stage 2 (spec §2.2)      never
    COREVISOR  NONE                       unmapped                       mapped (INV-EL2)
    HOST       NONE                       RW, EL1-XN                     -
    HOST       EL1_PGD..EL1_PTE, EL0_PGD  RO, XN                         W (INV-KPT-RO)
    HOST       EL1_KCODE, MOD_txt         RO, X                          W (INV-CODE-RO)
    HOST       EL1_RODATA, AUTH           RO, XN (vDSO pages: RO, X;     W (INV-CODE-RO)
                                          hardened: RO, EL0-X only)
    HOST       EL1_DATA, MOD_ro           RW, XN                         X at EL1 (INV-S2-WX)
    HOST       EL1_INIT                   RW, EL1-XN (hardened: RO, X    X at EL1 (INV-S2-WX;
                                          until unmapped, then NONE)     hardened: W)
    INVALID    (not RAM)                  device RW, XN                  -

Transitions (check_* may raise HypRefusal; commit_* only writes, asserts it cannot fail)::

    claim_table:  owner=HOST usage=NONE count=0 -> usage=L (L in kpt levels, EL0_PGD)
    release:      owner=HOST usage=L            -> usage=NONE (subcount kept: PTE leaves
                                                   that still map the page hold it)
    classify:     owner=HOST usage in {NONE, section} -> section class (boot only)
    give_el2:     any                           -> owner=COREVISOR usage=NONE (boot only)
    ref_inc / ref_dec_and_test:  subcount n -> n+1 / n -> n-1 (asserted against wrap)
"""

from __future__ import annotations

import enum
from array import array
from collections.abc import Callable
from typing import NewType

from secvma.kpcore.refusal import Errno, HypRefusal
from secvma.platform import PhysAddr

ClassListener = Callable[[int, "Owner", "Usage", "Owner", "Usage"], None]
"""Called as (pfn, old owner, old usage, new owner, new usage) after every owner/class change,
before the transition's stage-2 change (e.g. the DMA identity map drops a page there)."""

Pfn = NewType("Pfn", int)
"""A physical frame number (pa >> 12), not an index into the arrays."""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
MAX_RAM_PAGES = 4096 * 4096  # S2_PFN_SIZE: 64 GiB
U32_MAX = 0xFFFF_FFFF


def pfn_of(pa: int) -> Pfn:
    return Pfn(pa >> PAGE_SHIFT)


def pa_of(pfn: int) -> PhysAddr:
    return PhysAddr(pfn << PAGE_SHIFT)


class Owner(enum.IntEnum):
    """Owner ids (asm/hypsec_constant.h); VMs (1..64) do not exist in this model."""

    HOST = 0
    COREVISOR = 65
    INVALID = 0xFF  # stored value never used: pages outside RAM have no record


class Usage(enum.IntEnum):
    """The KINT usage class ("subowner"), spec §1.3; value 5 is unused in C."""

    NONE = 0
    EL1_PGD = 1
    EL1_PUD = 2
    EL1_PMD = 3
    EL1_PTE = 4
    EL1_INIT = 6
    EL1_KCODE = 7
    EL1_DATA = 8
    EL1_RODATA = 9
    EL0_PGD = 10
    EL1_AUTH = 11
    EL1_MOD_TXT = 12
    EL1_MOD_RO = 13

    @property
    def is_kpt(self) -> bool:
        return 1 <= self.value <= 4

    @property
    def is_table(self) -> bool:
        """Kernel or user page-table page (write-protected, emulated stores)."""
        return self.is_kpt or self is Usage.EL0_PGD

    @property
    def kpt_level(self) -> int:
        """Translation level (0..3) of a kernel table page of this class."""
        assert self.is_kpt, self
        return self.value - 1


# stored byte -> member (None: not a member, then the enum call raises as before): an enum
# call per lookup was a visible part of each HVC 30 page commit (issue 14)
_OWNER: tuple[Owner | None, ...] = tuple(
    Owner(v) if v in Owner._value2member_map_ else None for v in range(256))
_USAGE: tuple[Usage | None, ...] = tuple(
    Usage(v) if v in Usage._value2member_map_ else None for v in range(256))


def _owner(v: int) -> Owner:
    o = _OWNER[v]
    return Owner(v) if o is None else o


def _usage(v: int) -> Usage:
    u = _USAGE[v]
    return Usage(v) if u is None else u


KPT_BY_LEVEL = (Usage.EL1_PGD, Usage.EL1_PUD, Usage.EL1_PMD, Usage.EL1_PTE)
SECTION_CLASSES = frozenset({Usage.EL1_KCODE, Usage.EL1_DATA, Usage.EL1_INIT, Usage.EL1_RODATA})
READ_ONLY_CLASSES = frozenset({Usage.EL1_PGD, Usage.EL1_PUD, Usage.EL1_PMD, Usage.EL1_PTE,
                               Usage.EL0_PGD, Usage.EL1_KCODE, Usage.EL1_RODATA,
                               Usage.EL1_AUTH, Usage.EL1_MOD_TXT})
EL1_EXEC_CLASSES = frozenset({Usage.EL1_KCODE, Usage.EL1_MOD_TXT})


class PageTable:
    """Per-page metadata of all RAM. Accessors take a PA or Pfn; outside RAM reads INVALID."""

    def __init__(self, ram_base: int, ram_size: int) -> None:
        if ram_base % PAGE_SIZE or ram_size % PAGE_SIZE or ram_size <= 0:
            raise ValueError(f"RAM {ram_base:#x}+{ram_size:#x} is not page aligned")
        npages = ram_size >> PAGE_SHIFT
        if npages > MAX_RAM_PAGES:
            raise ValueError(f"{ram_size >> 30} GiB of RAM exceeds the 64 GiB the table holds")
        self.base_pfn = ram_base >> PAGE_SHIFT
        self.npages = npages
        self.owner = bytearray(npages)
        self.usage = bytearray(npages)
        self.subcount = array("I", bytes(4 * npages))
        self.count = array("I", bytes(4 * npages))
        self.dirty: set[int] = set()
        self.listeners: list[ClassListener] = []

    # --- lookup -------------------------------------------------------------------------

    @property
    def ram_base(self) -> PhysAddr:
        return pa_of(Pfn(self.base_pfn))

    @property
    def ram_end(self) -> PhysAddr:
        return pa_of(Pfn(self.base_pfn + self.npages))

    def index(self, pfn: int) -> int | None:
        """Array index of `pfn`, None outside RAM (get_s2_page_index -> INVALID64)."""
        i = pfn - self.base_pfn
        return i if 0 <= i < self.npages else None

    def in_ram(self, pa: int) -> bool:
        return self.index(pa >> PAGE_SHIFT) is not None

    def owner_of(self, pfn: int) -> Owner:
        i = self.index(pfn)
        return Owner.INVALID if i is None else _owner(self.owner[i])

    def usage_of(self, pfn: int) -> Usage:
        i = self.index(pfn)
        return Usage.NONE if i is None else _usage(self.usage[i])

    def subcount_of(self, pfn: int) -> int:
        i = self.index(pfn)
        return 0 if i is None else self.subcount[i]

    def count_of(self, pfn: int) -> int:
        i = self.index(pfn)
        return 0 if i is None else self.count[i]

    def range_uniform(self, pfn: int, npages: int) -> tuple[Owner, Usage] | None:
        """(owner, usage) shared by every page of [pfn, pfn+npages), None if mixed / not RAM."""
        i = self.index(pfn)
        if i is None or self.index(pfn + npages - 1) is None:
            return None
        o, u = self.owner[i], self.usage[i]
        if self.owner.count(o, i, i + npages) != npages:
            return None
        if self.usage.count(u, i, i + npages) != npages:
            return None
        return Owner(o), Usage(u)

    def pages_of(self, usage: Usage) -> list[Pfn]:
        """Every pfn whose class is `usage` (bytes.find scan, fast for rare classes)."""
        out: list[Pfn] = []
        b = bytes([usage])
        i = self.usage.find(b)
        while i >= 0:
            out.append(Pfn(self.base_pfn + i))
            i = self.usage.find(b, i + 1)
        return out

    # --- raw mutators: only transitions below call these ---------------------------------

    def _idx(self, pfn: int) -> int:
        i = self.index(pfn)
        assert i is not None, f"pfn {pfn:#x} outside RAM reached a commit"
        return i

    def _set_usage(self, pfn: int, usage: Usage) -> None:
        i = self._idx(pfn)
        old = self.usage[i]
        self.usage[i] = usage
        self.dirty.add(pfn)
        if self.listeners and old != usage:
            o = _owner(self.owner[i])
            for fn in self.listeners:
                fn(pfn, o, _usage(old), o, _usage(usage))

    def _set_owner(self, pfn: int, owner: Owner) -> None:
        i = self._idx(pfn)
        old = self.owner[i]
        self.owner[i] = owner
        self.dirty.add(pfn)
        if self.listeners and old != owner:
            u = _usage(self.usage[i])
            for fn in self.listeners:
                fn(pfn, _owner(old), u, _owner(owner), u)


# --- reference counts (pKVM hyp_page_ref_inc / dec_and_test) ------------------------------


def ref_inc(pages: PageTable, pfn: int) -> None:
    """subcount(pfn) += 1; no-op outside RAM (C ignores sets there)."""
    i = pages.index(pfn)
    if i is None:
        return
    assert pages.subcount[i] < U32_MAX, f"subcount of {pfn:#x} would wrap"
    pages.subcount[i] += 1
    pages.dirty.add(pfn)


def ref_dec_and_test(pages: PageTable, pfn: int, *, allow_wrap: bool = False) -> bool:
    """subcount(pfn) -= 1; True when it reached 0 from 1.

    `allow_wrap` reproduces spec §11 gap 17 (decrement of 0 wraps to 0xFFFFFFFF).
    """
    i = pages.index(pfn)
    if i is None:
        return False
    n = pages.subcount[i]
    if n == 0:
        assert allow_wrap, f"subcount of {pfn:#x} would underflow"
        pages.subcount[i] = U32_MAX
        pages.dirty.add(pfn)
        return False
    pages.subcount[i] = n - 1
    pages.dirty.add(pfn)
    return n == 1


# --- transitions ---------------------------------------------------------------------------


def check_claim_table(pages: PageTable, pfn: int, usage: Usage, *, rule: str,
                      count_checked: bool = True) -> None:
    """May `pfn` become a table page of class `usage`?

    owner=HOST usage=NONE count=0 -> usage=`usage`. Refusals: EINVAL (not RAM), EPERM (not
    host-owned, or already classified), EBUSY (device mappings hold it: count != 0, gap 5).
    C: kint/HostKptAux.c:handle_host_new_page
    """
    assert usage.is_table, usage
    i = pages.index(pfn)
    if i is None:
        raise HypRefusal(Errno.EINVAL, rule, "table page outside RAM", pfn=pfn)
    if pages.owner[i] != Owner.HOST:
        raise HypRefusal(Errno.EPERM, rule, "table page not owned by the host",
                         pfn=pfn, owner=pages.owner[i])
    if pages.usage[i] != Usage.NONE:
        raise HypRefusal(Errno.EPERM, rule,
                         f"page is {Usage(pages.usage[i]).name}, a new table must be NONE",
                         pfn=pfn, usage=pages.usage[i])
    if count_checked and pages.count[i]:
        raise HypRefusal(Errno.EBUSY, rule, "page is mapped by a device", pfn=pfn)


def commit_claim_table(pages: PageTable, pfn: int, usage: Usage) -> None:
    """usage NONE -> `usage` (metadata only; stage 2 and zeroing are done by `hostmem`)."""
    i = pages._idx(pfn)
    assert pages.owner[i] == Owner.HOST and pages.usage[i] == Usage.NONE
    pages._set_usage(pfn, usage)


def commit_release(pages: PageTable, pfn: int) -> Usage:
    """usage L -> NONE; returns the old class. C: handle_host_remove_page.

    subcount is left alone: a release through an unlink happens at 0, while HVC 34 may free a
    user PGD that kernel PTEs still map (their later unmaps must find their references).
    """
    old = Usage(pages.usage[pages._idx(pfn)])
    pages._set_usage(pfn, Usage.NONE)
    return old


def commit_classify(pages: PageTable, pfn: int, usage: Usage, *, overwrite: bool) -> bool:
    """Boot classification of one page; False (nothing done) if not host RAM.

    `overwrite=False` is init_set_section_subowner (never replaces a table class);
    `overwrite=True` is init_set_pt_pfn_subowner (a table class replaces anything).
    C: kint/el1_kpt.c:init_set_section_subowner / init_set_pt_pfn_subowner
    """
    i = pages.index(pfn)
    if i is None or pages.owner[i] != Owner.HOST:
        return False
    if not overwrite and Usage(pages.usage[i]).is_kpt:
        return False
    pages._set_usage(pfn, usage)
    return True


def commit_give_el2(pages: PageTable, pfn: int) -> None:
    """Any -> owner COREVISOR, usage NONE. C: sekvm/TrapDispatcher.c:protect_el2_mem."""
    pages._set_owner(pfn, Owner.COREVISOR)
    pages._set_usage(pfn, Usage.NONE)
