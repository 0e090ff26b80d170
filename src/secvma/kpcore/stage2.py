"""The host stage-2 table manager: descriptors in pages of the hypervisor's pool.

C: sekvm/NPTWalk.c:set_npt, sekvm/NPTOps.c:clear_pfn_host, sekvm/PTAlloc.c.

Geometry: VTCR_EL2 T0SZ=32 (4 GiB IPA), SL0=1, 4 KB granule, so the walk starts at level 1
with a single root page of which entries 0..3 are used (1 GiB each); level 2 maps 2 MiB,
level 3 4 KB. Tables live in guest RAM inside the hypervisor's reserved region (the guest
cannot map it), so the tables *are* the state; `leaves` is a shadow dict {ipa: (level, desc)}
kept in step for inspection and invariant checks (tests compare it with a real walk).

Edits are make-before-break: a block is split by writing a complete next-level table with the
same output and permissions and then swapping the block entry for the table entry, so a live
mapping is never transiently invalid. Every edit that removes or narrows a mapping records the
IPA in `pending_flush`; the caller ends its commit with `flush()` (TLBI IPAS2E1IS + VMALLE1IS,
or one VMALLS12E1IS when many pages changed: the mailbox takes at most 63 commands).

Permission kinds (spec §2.3; XN[1:0] = bits 54:53, with FEAT_XNX semantics)::

    kind     S2AP  XN   memory   meaning                     C name
    DEVICE   RW    10   nGnRE    device, never executable    PAGE_S2_DEVICE
    RO       R     10   WB       read-only, never exec       PAGE_S2 / SECT_S2
    RW       RW    10   WB       read-write, never exec      PAGE_S2P / SECT_S2P
    KERNEL   RW    01   WB       RW, EL0 exec, EL1 XN        PAGE_S2_KERNEL / SECT_S2_KERNEL
    KCODE    R     00   WB       read-only, exec at EL0/EL1  PAGE_S2_KCODE / SECT_S2_KCODE
    UCODE    R     01   WB       read-only, EL0 exec only    (secvma: the vDSO under hardened
                                                              and transparent; C maps it KCODE)
    OPEN     RW    00   WB       everything (before HVC 6)   (NullHypervisor's map)
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Protocol

from secvma.arch.descriptors import (
    AF,
    AP_SHIFT,
    DESC_TABLE,
    DESC_VALID,
    MEMATTR_SHIFT,
    OA_MASK,
    S2_XN_SHIFT,
    SH_SHIFT,
    S2MemAttr,
    Shareability,
    level_shift,
    level_size,
    oa_mask,
)
from secvma.arch.el2 import VTCR_4G as VTCR_4G
from secvma.kpcore.refusal import Errno, HypRefusal
from secvma.platform import PhysAddr, Platform, Vcpu

ROOT_LEVEL = 1
IPA_LIMIT = 1 << 32
FLUSH_ALL_THRESHOLD = 16
"""More pending IPAs than this in one commit: one TLBI VMALLS12E1IS instead of many."""

VMID = 1


class PermKind(enum.Enum):
    """Stage-2 permission kinds: value = (memattr, S2AP, XN[1:0])."""

    DEVICE = (S2MemAttr.DEVICE_nGnRE, 0b11, 0b10)
    RO = (S2MemAttr.NORMAL_WB, 0b01, 0b10)
    RW = (S2MemAttr.NORMAL_WB, 0b11, 0b10)
    KERNEL = (S2MemAttr.NORMAL_WB, 0b11, 0b01)
    KCODE = (S2MemAttr.NORMAL_WB, 0b01, 0b00)
    UCODE = (S2MemAttr.NORMAL_WB, 0b01, 0b01)  # user code in kernel memory: the vDSO
    OPEN = (S2MemAttr.NORMAL_WB, 0b11, 0b00)  # before install only: RW and executable

    @property
    def writable(self) -> bool:
        return bool(self.value[1] & 0b10)

    @property
    def exec_el1(self) -> bool:
        """EL1 may execute (FEAT_XNX reading of XN[1:0]: 00 and 11)."""
        return self.value[2] in (0b00, 0b11)


_KIND_BY_BITS: dict[tuple[int, int, int], PermKind] = {
    (int(k.value[0]), k.value[1], k.value[2]): k for k in PermKind}


def _leaf_bits(level: int, kind: PermKind) -> int:
    memattr, s2ap, xn = kind.value
    sh = Shareability.NON if kind is PermKind.DEVICE else Shareability.INNER
    return (DESC_VALID | (DESC_TABLE if level == 3 else 0) | (memattr << MEMATTR_SHIFT)
            | (s2ap << AP_SHIFT) | (sh << SH_SHIFT) | AF | (xn << S2_XN_SHIFT))


_LEAF_BITS = {(level, kind): _leaf_bits(level, kind) for level in (1, 2, 3) for kind in PermKind}
_OA_MASKS = {level: oa_mask(level) for level in (1, 2, 3)}


def leaf_desc(oa: int, level: int, kind: PermKind) -> int:
    """A stage-2 block (level 1/2) or page (level 3) descriptor for `kind`, AF set."""
    assert oa & ~_OA_MASKS[level] == 0, f"{oa:#x} misaligned for level {level}"
    return oa | _LEAF_BITS[level, kind]


def kind_of(desc: int) -> PermKind | None:
    """The PermKind a leaf descriptor encodes (None for a foreign encoding)."""
    bits = ((desc >> MEMATTR_SHIFT) & 0xF, (desc >> AP_SHIFT) & 3, (desc >> S2_XN_SHIFT) & 3)
    return _KIND_BY_BITS.get(bits)


class Memory(Protocol):
    """What the manager needs of the platform: guest-physical access."""

    def read(self, pa: PhysAddr, size: int) -> bytes: ...

    def write(self, pa: PhysAddr, data: bytes) -> None: ...

    def read_u64(self, pa: PhysAddr) -> int: ...

    def write_u64(self, pa: PhysAddr, value: int) -> None: ...


class Stage2:
    """Host stage-2 tables in the pool [pool_base, pool_end) of hypervisor memory."""

    def __init__(self, mem: Memory, pool_base: int, pool_end: int) -> None:
        if pool_base % 4096 or pool_end % 4096 or pool_end - pool_base < 2 * 4096:
            raise ValueError(f"stage-2 pool {pool_base:#x}..{pool_end:#x} unusable")
        self.mem = mem
        self.pool_base = pool_base
        self.pool_end = pool_end
        self.free: list[int] = list(range(pool_end - 4096, pool_base - 1, -4096))
        self.tables: dict[int, tuple[int, int]] = {}  # table pa -> (level, base ipa)
        self._l3: dict[int, int] = {}  # base ipa of a 2 MB region -> its level-3 table pa
        self.leaves: dict[int, tuple[int, int]] = {}  # base ipa -> (level, desc)
        self.pending_flush: set[int] = set()
        self.dirty_leaves: set[int] = set()
        self.root = self._alloc_table(ROOT_LEVEL, 0)

    # --- pool ---------------------------------------------------------------------------

    @property
    def available(self) -> int:
        return len(self.free)

    def check_available(self, n: int, *, rule: str) -> None:
        """Refuse with ENOMEM unless `n` table pages can be allocated (check phase)."""
        if len(self.free) < n:
            raise HypRefusal(Errno.ENOMEM, rule, "stage-2 table pool exhausted",
                             free=len(self.free), needed=n)

    def _alloc_table(self, level: int, base: int) -> int:
        assert self.free, "stage-2 pool exhausted inside a commit (check_available missed)"
        pa = self.free.pop()
        self.mem.write(PhysAddr(pa), bytes(4096))
        self.tables[pa] = (level, base)
        if level == 3:
            self._l3[base] = pa
        return pa

    def vttbr(self) -> int:
        return self.root | (VMID << 48)

    # --- lookup -------------------------------------------------------------------------

    def _slot(self, table: int, level: int, ipa: int) -> int:
        return table + ((ipa >> level_shift(level)) & 511) * 8

    def walk(self, ipa: int) -> tuple[int, int, int]:
        """(level, slot pa, raw) where the walk for `ipa` stops: a leaf or an empty slot."""
        assert 0 <= ipa < IPA_LIMIT
        table, level = self.root, ROOT_LEVEL
        while True:
            slot = self._slot(table, level, ipa)
            raw = self.mem.read_u64(PhysAddr(slot))
            if level < 3 and raw & 3 == 3:
                table, level = raw & OA_MASK, level + 1
                continue
            return level, slot, raw

    def leaf(self, ipa: int) -> tuple[int, int, int] | None:
        """(base ipa, level, desc) of the leaf mapping `ipa`, None if unmapped."""
        if not 0 <= ipa < IPA_LIMIT:
            return None
        for level in (3, 2, 1):
            base = ipa & ~(level_size(level) - 1)
            hit = self.leaves.get(base)
            if hit is not None and hit[0] == level:
                return base, level, hit[1]
        return None

    def has_table_below(self, base: int, level: int) -> bool:
        """Whether the slot for a level-`level` block at `base` already holds a table."""
        lvl, _slot, raw = self.walk(base)
        return lvl > level or (lvl == level and level < 3 and raw & 3 == 3)

    def iter_leaves(self) -> Iterator[tuple[int, int, int]]:
        for base, (level, desc) in self.leaves.items():
            yield base, level, desc

    # --- edits --------------------------------------------------------------------------

    def tables_needed(self, base: int, level: int) -> int:
        """Table pages `map_leaf(base, level)` may allocate (upper bound, check phase)."""
        return max(0, level - ROOT_LEVEL)

    def map_leaf(self, base: int, level: int, kind: PermKind) -> None:
        """Fill the empty slot for a level-`level` leaf at `base` (creating tables)."""
        assert base % level_size(level) == 0 and 0 <= base < IPA_LIMIT
        table, lvl = self.root, ROOT_LEVEL
        while lvl < level:
            slot = self._slot(table, lvl, base)
            raw = self.mem.read_u64(PhysAddr(slot))
            if raw & 3 != 3:
                assert raw == 0, f"map_leaf {base:#x} L{level}: block at L{lvl} in the way"
                sub = self._alloc_table(lvl + 1, base & ~(level_size(lvl) - 1))
                self.mem.write_u64(PhysAddr(slot), sub | DESC_VALID | DESC_TABLE)
                raw = sub | 3
            table, lvl = raw & OA_MASK, lvl + 1
        slot = self._slot(table, level, base)
        assert self.mem.read_u64(PhysAddr(slot)) == 0, f"map_leaf {base:#x}: slot in use"
        desc = leaf_desc(base, level, kind)
        self.mem.write_u64(PhysAddr(slot), desc)
        self.leaves[base] = (level, desc)
        self.dirty_leaves.add(base)

    def set_leaf(self, base: int, level: int, kind: PermKind) -> None:
        """Replace the permission of the existing leaf at (`base`, `level`) in place."""
        table = self._l3.get(base & ~0x1F_FFFF) if level == 3 else None
        if table is not None:  # tables are only ever linked, never unlinked (reset aside)
            lvl, slot = 3, table + ((base >> 12) & 511) * 8
            raw = self.mem.read_u64(PhysAddr(slot))
        else:
            lvl, slot, raw = self.walk(base)
        assert lvl == level and raw & 1, f"set_leaf {base:#x}: no L{level} leaf"
        old = kind_of(raw)
        desc = leaf_desc(base, level, kind)
        self.mem.write_u64(PhysAddr(slot), desc)
        self.leaves[base] = (level, desc)
        self.dirty_leaves.add(base)
        if old is None or old.writable or old.exec_el1 or old is not kind:
            self.pending_flush.add(base)

    def unmap_leaf(self, base: int, level: int) -> None:
        """Remove the leaf at (`base`, `level`) (the slot becomes empty; TLBI pending)."""
        lvl, slot, raw = self.walk(base)
        assert lvl == level and raw & 1, f"unmap_leaf {base:#x}: no L{level} leaf"
        self.mem.write_u64(PhysAddr(slot), 0)
        del self.leaves[base]
        self.dirty_leaves.add(base)
        self.pending_flush.add(base)

    def split(self, base: int, level: int) -> None:
        """Replace the block at (`base`, `level`) by a level+1 table of identical leaves."""
        assert level in (1, 2)
        lvl, slot, raw = self.walk(base)
        assert lvl == level and raw & 3 == 1, f"split {base:#x}: no L{level} block"
        kind = kind_of(raw)
        assert kind is not None
        sub = self._alloc_table(level + 1, base)
        del self.leaves[base]  # the first child has the same base: replace, then add
        step = level_size(level + 1)
        entries = bytearray(4096)
        for i in range(512):
            d = leaf_desc(base + i * step, level + 1, kind)
            entries[i * 8:i * 8 + 8] = d.to_bytes(8, "little")
            self.leaves[base + i * step] = (level + 1, d)
            self.dirty_leaves.add(base + i * step)
        self.mem.write(PhysAddr(sub), bytes(entries))  # make ...
        self.mem.write_u64(PhysAddr(slot), sub | DESC_VALID | DESC_TABLE)  # ... before break
        self.pending_flush.add(base)

    def split_to_page(self, ipa: int) -> int:
        """Split blocks covering `ipa` until it has its own 4 KB leaf; returns tables used."""
        used = 0
        hit = self.leaf(ipa)
        while hit is not None and hit[1] < 3:
            self.split(hit[0], hit[1])
            used += 1
            hit = self.leaf(ipa)
        return used

    def reset(self) -> None:
        """Unmap everything: root zeroed, all other tables back to the pool (TLBI pending)."""
        for pa in list(self.tables):
            if pa != self.root:
                del self.tables[pa]
                self.free.append(pa)
        self._l3.clear()
        self.mem.write(PhysAddr(self.root), bytes(4096))
        self.dirty_leaves.update(self.leaves)
        self.leaves.clear()
        self.pending_flush.add(-1)

    def flush(self, platform: Platform, cpu: Vcpu) -> None:
        """Issue the TLB maintenance the edits since the last flush need."""
        pending, self.pending_flush = self.pending_flush, set()
        if not pending:
            return
        if -1 in pending or len(pending) > FLUSH_ALL_THRESHOLD:
            platform.flush_tlb_all(cpu)
            return
        for ipa in sorted(pending):
            platform.flush_tlb_ipa(cpu, PhysAddr(ipa))

    # --- statistics ---------------------------------------------------------------------

    def histogram(self) -> dict[str, int]:
        """Leaf count by "<size> <kind>", e.g. "2M KERNEL"."""
        names = {1: "1G", 2: "2M", 3: "4K"}
        out: dict[str, int] = {}
        for _base, level, desc in self.iter_leaves():
            kind = kind_of(desc)
            key = f"{names[level]} {kind.name if kind else 'OTHER'}"
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))
