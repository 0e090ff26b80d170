"""DMA for an unmodified kernel: the SMMU follows the page-usage table (transparent mode).

A stock kernel is not shown the SMMU (its DTB has none), so its drivers give devices physical
addresses. The hypervisor therefore programs an identity translation, IOVA = PA, of exactly
the pages a device may touch - host pages of class NONE - for every stream, with one shared
table in its own memory (pKVM's "the IOMMU follows the host's stage 2", on the stage-1 tables
QEMU 7.2's SMMUv3 offers). It stays in step through one hook, a `PageTable` listener::

    page class change                       device tables
    HOST NONE -> anything else              leaf cleared at the class change; the SMMU's
    (table, text, module, hypervisor ...)   TLB entries of every page cleared in the trap
                                            are invalidated (TLBI_NH_VA each, or one
                                            TLBI_NH_ASID for many, then CMD_SYNC) at the end
                                            of the trap, before the stage-2 change takes
                                            effect (the trampoline's TLBI at ERET)
    anything -> HOST NONE                   leaf written (no invalidation needed)

Besides RAM, only the interrupt controller's MSI doorbell frame (`SmmuWindow.msi`) is mapped:
a PCI device signals MSI-X by a DMA write there.

One invalidation per trap, not per page: a swapper learn changes thousands of classes, and
each SYNC is a round trip to QEMU. Limit: between a page's class change and the end of that
same trap (the hypervisor's own handling time), a device that already holds a translation of
the page in the SMMU's TLB could still write it, e.g. into a table page just zeroed.

Wiring (transparent.py): `attach(st, plat)` after `KState.create`, `dma.end_of_trap(st)`
(with the trapping vCPU) after each trap. Faults drained from the event queue go to `refusals` (`dma-fault`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from secvma.arch import smmuv3 as A
from secvma.kpcore.dma import DmaState
from secvma.kpcore.pages import Owner, Usage
from secvma.kpcore.smmu import NSTREAMS, Context, Smmu
from secvma.kpcore.state import KState
from secvma.platform import PhysAddr, Platform, Vcpu

IOVA_LIMIT = 1 << A.IOVA_BITS


@dataclass
class IdentityDma:
    """The identity map and its counters (`unmapped`: pages taken away from devices)."""

    smmu: Smmu
    ctx: Context
    mapped: bytearray = field(default_factory=bytearray)
    unmapped: int = 0
    remapped: int = 0
    base_pfn: int = 0
    pending: list[int] = field(default_factory=list)
    flushes: int = 0
    msi: set[int] = field(default_factory=set)

    def _leaf_slot(self, pa: int) -> int:
        return self.smmu.table_for(self.ctx, pa) + 8 * A.io_index(pa, 3)

    def changed(self, pfn: int, old_owner: Owner, old_usage: Usage, new_owner: Owner,
                new_usage: Usage) -> None:
        """The `PageTable` listener (see the module table)."""
        was = old_owner is Owner.HOST and old_usage is Usage.NONE
        now = new_owner is Owner.HOST and new_usage is Usage.NONE
        pa = pfn << 12
        if was == now or pa >= IOVA_LIMIT:
            return
        i = pfn - self.base_pfn
        if was:
            if not self.mapped[i]:
                return
            self.smmu.plat.write_u64(PhysAddr(self._leaf_slot(pa)), 0)
            self.pending.append(pa)
            self.mapped[i] = 0
            self.unmapped += 1
        else:
            if self.smmu.tables_free() < 2:
                return  # stays unreachable: safe, the device just cannot use the page
            self.smmu.plat.write_u64(PhysAddr(self._leaf_slot(pa)), A.io_page_desc(pa, True))
            self.mapped[i] = 1
            self.remapped += 1

    def flush(self, cpu: Vcpu | None = None) -> None:
        """Invalidate the SMMU TLB for every page dropped since the last flush; done before
        `cpu` resumes (or now)."""
        if not self.pending:
            return
        if len(self.pending) > 64:
            cmds = [A.cmd_tlbi_nh_asid(self.ctx.asid)]
        else:
            cmds = [A.cmd_tlbi_nh_va(self.ctx.asid, pa) for pa in self.pending]
        self.smmu.submit(cmds, cpu)
        self.pending.clear()
        self.flushes += 1

    def is_mapped(self, pfn: int) -> bool:
        i = pfn - self.base_pfn
        return 0 <= i < len(self.mapped) and bool(self.mapped[i])


def attach(st: KState, plat: Platform) -> IdentityDma | None:
    """Take the SMMU, map every host NONE page (IOVA = PA) for all streams, hook the page
    table. None when the board has no SMMU."""
    win = plat.smmu
    if win is None:
        return None
    smmu = Smmu(plat, win)
    smmu.enable()
    ctx = smmu.attach_shared(range(NSTREAMS))
    pages = st.pages
    ident = IdentityDma(smmu, ctx, bytearray(pages.npages), base_pfn=pages.base_pfn)
    chunk = 512
    for i0 in range(0, pages.npages, chunk):
        pa0 = (pages.base_pfn + i0) << 12
        if pa0 >= IOVA_LIMIT:
            break
        n = min(chunk, pages.npages - i0)
        d0 = A.io_page_desc(pa0, True)
        if pages.owner.count(Owner.HOST, i0, i0 + n) == n and \
                pages.usage.count(Usage.NONE, i0, i0 + n) == n:  # the usual case: one pack
            entries = bytearray(struct.pack(f"<{n}Q", *range(d0, d0 + (n << 12), 1 << 12)))
            entries += bytes(A.PAGE - len(entries))
            ident.mapped[i0:i0 + n] = b"\x01" * n
            any_mapped = True
        else:
            entries = bytearray(A.PAGE)
            any_mapped = False
            for k in range(n):
                i = i0 + k
                if pages.owner[i] == Owner.HOST and pages.usage[i] == Usage.NONE:
                    entries[8 * k:8 * k + 8] = (d0 + (k << 12)).to_bytes(8, "little")
                    ident.mapped[i] = 1
                    any_mapped = True
        if any_mapped:
            if smmu.tables_free() < 2:
                break  # the rest stays unreachable (safe)
            plat.write(PhysAddr(smmu.table_for(ctx, pa0)), bytes(entries))
    if win.msi is not None:
        base, size = win.msi
        for pa in range(base, base + size, A.PAGE):
            slot = smmu.table_for(ctx, pa) + 8 * A.io_index(pa, 3)
            plat.write_u64(PhysAddr(slot), A.io_page_desc(pa, True))
            ident.msi.add(pa)
    smmu.submit([A.cmd_tlbi_nh_asid(ctx.asid)])
    st.dma = DmaState(smmu)
    st.dma.identity = ident
    pages.listeners.append(ident.changed)
    return ident


def hide_window(st: KState, plat: Platform) -> None:
    """Take the SMMU's registers out of a stage-2 device block (split to pages, unmap)."""
    win = plat.smmu
    if win is None:
        return
    for pa in range(win.base, win.base + win.size, A.PAGE):
        if st.s2.leaf(pa) is not None:
            st.s2.split_to_page(pa)
            st.s2.unmap_leaf(pa, 3)
