"""DMA protection (spec §6) adapted to an SMMUv3: SECvma's SMMU hypercalls and their rules.

SeKVM mediated an SMMUv2: a *context bank* bound to a VMID, page tables in EL2's SMMU pool,
HVC 23-27 to allocate, map, look up and clear. On an SMMUv3 a bank becomes a *stream*: the
stream table entry of StreamID `cb` (the PCI requester ID) with its one context descriptor and
its own IO page table, all in hypervisor memory (`kpcore.smmu`). The kernel never sees the
SMMU; it asks through these calls::

    #   name                 x1..x5                  here
    23  SMMU_FREE_PGD        cb, smmu                stream off (STE invalid); every mapping
                                                     dropped, counts given back; x0 = 0
    24  SMMU_ALLOC_PGD       cb, vmid, smmu          stream -> context with an empty table
                                                     (vmid must be 0: no VMs); x0 = 0
    25  SMMU_LPAE_MAP        iova, pa, prot, cb,     one 4 KB page, prot bit 0 read, bit 1
                             smmu                    write; count(pa) += 1; x0 = 0
    26  SMMU_IOVA_TO_PHYS    iova, cb, smmu          x0 = PA (0: unmapped)
    27  SMMU_CLEAR           iova, cb, smmu          unmap, TLBI + SYNC; count(pa) -= 1

Map rule (C: sekvm/MemAux.c:update_smmu_page + the KINT check): the page must be MMIO (not the
SMMU itself) or a host page of class NONE; a host page with a usage class or a page of the
hypervisor is refused. C panics there (secvma2024: HypPanic, the machine halts); `hardened`
refuses with EPERM. The reverse direction (gap 5): with `dma_count_unchecked` off (hardened)
a page with count > 0 cannot become a page table (pages.check_claim_table) or module text
(modload) until every mapping is cleared; secvma2024 lets it, so DMA keeps write access.

Deviation, both policies: C requires gfn(pfn) == iova >> 12 for host pages (gap 13, only IOVA
page 0 works); here any IOVA below 4 GiB is accepted, and the PTE is written only after the
check (C writes it first, then panics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from secvma.kpcore.pages import U32_MAX, Owner, Usage
from secvma.kpcore.refusal import Errno, HypPanic, HypRefusal, Outcome, Refusal
from secvma.kpcore.smmu import NSTREAMS, Fault, Smmu
from secvma.kpcore.state import KState
from secvma.platform import Platform, Vcpu

if TYPE_CHECKING:
    from secvma.kpcore.dmaidentity import IdentityDma

PAGE = 4096
IOVA_LIMIT = 1 << 32
PROT_READ = 1
PROT_WRITE = 2
HVC_SMMU_FIRST, HVC_SMMU_LAST = 23, 27
DRAIN_REFUSALS_MAX = 4096


@dataclass
class DmaState:
    """The SMMU driver plus what each stream maps (iova -> pa), mirrored from its tables."""

    smmu: Smmu
    maps: dict[int, dict[int, int]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    fault_count: int = 0
    identity: IdentityDma | None = None
    """Transparent mode: every stream shares the identity map of ordinary pages."""


def attach(st: KState, plat: Platform) -> None:
    """Take the SMMU (if the board has one) before the kernel runs: all streams off."""
    win = plat.smmu
    if win is None or st.dma is not None:
        return
    smmu = Smmu(plat, win)
    smmu.enable()
    st.dma = DmaState(smmu)


def _need(st: KState) -> DmaState:
    if st.dma is None:
        raise HypRefusal(Errno.EINVAL, "smmu-absent", "this board has no SMMU")
    return st.dma


def _sid(dma: DmaState, cb: int, smmu: int, *, rule: str, allocated: bool = True) -> int:
    if smmu != 0:
        raise HypRefusal(Errno.EINVAL, rule, "only SMMU 0 exists", smmu=smmu)
    if not 0 <= cb < NSTREAMS:
        raise HypRefusal(Errno.EINVAL, rule, "stream id out of range", cb=cb)
    if allocated and cb not in dma.smmu.contexts:
        raise HypRefusal(Errno.ENOENT, rule, "no context for this stream", cb=cb)
    return cb


def _iova(iova: int, rule: str) -> int:
    if iova % PAGE or not 0 <= iova < IOVA_LIMIT:
        raise HypRefusal(Errno.EINVAL, rule, "IOVA must be page aligned and below 4 GiB",
                         iova=iova)
    return iova


def check_map_target(st: KState, plat: Platform, pa: int, *, rule: str) -> None:
    """May a device be given `pa`? MMIO (not the SMMU) or a host page of class NONE."""
    if pa % PAGE or pa >> 48:
        raise HypRefusal(Errno.EINVAL, rule, "physical address not a page", pa=pa)
    pfn = pa >> 12
    owner = st.pages.owner_of(pfn)
    win = plat.smmu
    if owner is Owner.INVALID:
        if win is not None and win.base <= pa < win.base + win.size:
            raise HypRefusal(Errno.EPERM, rule, "the SMMU's own registers", pa=pa)
        return
    err = HypPanic if not st.policy.hardened else HypRefusal
    if owner is not Owner.HOST:
        raise err(Errno.EPERM, rule, "page owned by the hypervisor", pa=pa, owner=owner)
    usage = st.pages.usage_of(pfn)
    if usage is not Usage.NONE:
        raise err(Errno.EPERM, rule, f"map to protected memory page ({usage.name})", pa=pa,
                  usage=usage)


def _count(st: KState, pa: int, delta: int) -> None:
    i = st.pages.index(pa >> 12)
    if i is None:
        return
    n = st.pages.count[i] + delta
    assert 0 <= n < U32_MAX, f"DMA count of {pa:#x} would become {n}"
    st.pages.count[i] = n
    st.pages.dirty.add(pa >> 12)


def alloc_context(st: KState, cb: int, vmid: int, smmu: int, cpu: Vcpu | None = None) -> int:
    """HVC 24. C: sekvm/MemHandler.c:__el2_alloc_smmu_pgd (bank -> STE + CD, empty table)."""
    dma = _need(st)
    rule = "smmu-alloc"
    sid = _sid(dma, cb, smmu, rule=rule, allocated=False)
    if vmid != 0:
        raise HypRefusal(Errno.EINVAL, rule, "no VMs: a context belongs to the host", vmid=vmid)
    if sid in dma.smmu.contexts:
        raise HypRefusal(Errno.EBUSY, rule, "stream already has a context", cb=cb)
    if dma.smmu.tables_free() < 1:
        raise HypRefusal(Errno.ENOMEM, rule, "SMMU table pool exhausted")
    dma.smmu.attach(sid, cpu)
    dma.maps[sid] = {}
    return 0


def free_context(st: KState, cb: int, smmu: int, cpu: Vcpu | None = None) -> int:
    """HVC 23. C: sekvm/MemHandler.c:__el2_free_smmu_pgd (counts given back: no stale count)."""
    dma = _need(st)
    sid = _sid(dma, cb, smmu, rule="smmu-free")
    dma.smmu.detach(sid, cpu)
    for pa in dma.maps.pop(sid).values():
        _count(st, pa, -1)
    return 0


def map_page(st: KState, plat: Platform, iova: int, pa: int, prot: int, cb: int,
             smmu: int) -> int:
    """HVC 25. C: __el2_arm_lpae_map -> map_smmu -> update_smmu_page (+ KINT check)."""
    dma = _need(st)
    rule = "smmu-map"
    sid = _sid(dma, cb, smmu, rule=rule)
    _iova(iova, rule)
    if prot & ~(PROT_READ | PROT_WRITE) or not prot:
        raise HypRefusal(Errno.EINVAL, rule, "prot must be read and/or write", prot=prot)
    check_map_target(st, plat, pa, rule=rule)
    if iova in dma.maps[sid]:
        raise HypRefusal(Errno.EBUSY, rule, "IOVA already mapped", iova=iova, cb=cb)
    ctx = dma.smmu.contexts[sid]
    if dma.smmu.tables_free() < dma.smmu.tables_needed(ctx, iova):
        raise HypRefusal(Errno.ENOMEM, rule, "SMMU table pool exhausted")
    dma.smmu.map(ctx, iova, pa, bool(prot & PROT_WRITE))
    dma.maps[sid][iova] = pa
    _count(st, pa, +1)
    return 0


def iova_to_phys(st: KState, iova: int, cb: int, smmu: int) -> int:
    """HVC 26. C: __el2_arm_lpae_iova_to_phys (0 when unmapped)."""
    dma = _need(st)
    sid = _sid(dma, cb, smmu, rule="smmu-iova")
    hit = dma.smmu.lookup(dma.smmu.contexts[sid], iova & ~(PAGE - 1))
    return 0 if hit is None else hit[0] | (iova & (PAGE - 1))


def clear_page(st: KState, iova: int, cb: int, smmu: int, cpu: Vcpu | None = None) -> int:
    """HVC 27. C: __el2_arm_lpae_clear -> unmap_smmu_page (count -= 1)."""
    dma = _need(st)
    rule = "smmu-clear"
    sid = _sid(dma, cb, smmu, rule=rule)
    _iova(iova, rule)
    pa = dma.maps[sid].get(iova)
    if pa is None:
        raise HypRefusal(Errno.ENOENT, rule, "IOVA not mapped", iova=iova, cb=cb)
    dma.smmu.unmap(dma.smmu.contexts[sid], iova, cpu)
    del dma.maps[sid][iova]
    _count(st, pa, -1)
    return 0


def handle_smmu_hvc(st: KState, plat: Platform, cpu: Vcpu, x: tuple[int, ...]) -> int:
    """HVC 23-27; the SMMU commands they need are rung by `cpu` before it resumes."""
    nr = x[0]
    if nr == 23:
        return free_context(st, x[1], x[2], cpu)
    if nr == 24:
        return alloc_context(st, x[1], x[2], x[3], cpu)
    if nr == 25:
        return map_page(st, plat, x[1], x[2], x[3], x[4], x[5])
    if nr == 26:
        return iova_to_phys(st, x[1], x[2], x[3])
    assert nr == 27, nr
    return clear_page(st, x[1], x[2], x[3], cpu)


def end_of_trap(st: KState, cpu: Vcpu | None) -> None:
    """Before `cpu` resumes: pending identity-map invalidations, then new faults."""
    dma = st.dma
    if dma is None:
        return
    if dma.identity is not None:
        dma.identity.flush(cpu)
    drain_faults(st)


def drain_faults(st: KState) -> list[Fault]:
    """Move the SMMU's new event records into `refusals` (rule `dma-fault`)."""
    dma = st.dma
    if dma is None or not dma.smmu.enabled:
        return []
    new = dma.smmu.drain()
    for f in new:
        dma.fault_count += 1
        if len(dma.faults) < DRAIN_REFUSALS_MAX:
            dma.faults.append(f)
            st.refusals.append(fault_refusal(f))
    return new


def fault_refusal(f: Fault) -> Refusal:
    return Refusal("dma-fault", Errno.EPERM, f"SMMU refused a device {'write' if f.write else 'read'}"
                   f": {f.reason}", Outcome.REFUSED, -1, 0,
                   {"stream": f.sid, "iova": f.iova})


def summary(st: KState) -> dict[str, object] | None:
    """JSON-able DMA counters (None without an SMMU)."""
    dma = st.dma
    if dma is None:
        return None
    out: dict[str, object] = {"streams": len(dma.smmu.contexts), "faults": dma.fault_count,
                              "smmu_commands": dma.smmu.commands, "smmu_syncs": dma.smmu.syncs}
    ident = dma.identity
    if ident is not None:
        out.update(identity_pages=sum(ident.mapped), dropped=ident.unmapped,
                   restored=ident.remapped, invalidations=ident.flushes)
    else:
        out["mapped_pages"] = sum(len(m) for m in dma.maps.values())
    return out
