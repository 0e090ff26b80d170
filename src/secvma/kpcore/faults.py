"""Host stage-2 aborts: lazy fill, emulated table stores, and the rest (spec §2.1, §2.6).

C: sekvm/FaultHandler.c:handle_host_stage2_fault, kint/HostKpt.c:host_kpt_handler.

    fault                                      page                        action
    translation / access flag / S1PTW walk     host RAM, MMIO              map by class (RETRY)
                                               EL2 memory                  refuse (C: panic)
    permission, and the leaf now allows it     any                         RETRY (stale TLB)
    write permission                           EL1_PGD..PTE, EL0_PGD,      emulate (kpt.py)
                                               MOD_txt/ro
                                               NONE in the pool (2024)     emulate unchecked
                                               anything else               refuse (C: panic)
    fetch / read permission                    any                         refuse (C: re-maps the
                                                                           same entry: stall)
"""

from __future__ import annotations

from secvma.arch.esr import EC, IL, DataAbort, FaultKind, InstructionAbort, encode_fsc
from secvma.arch.walk import AccessType, s2_perms
from secvma.kpcore import kpt
from secvma.kpcore.bootinfo import in_pgtable_pool
from secvma.kpcore.fetch import s1_translate
from secvma.kpcore.hostmem import map_page_host
from secvma.kpcore.pages import Owner, Usage
from secvma.kpcore.refusal import Errno, HypPanic, HypRefusal, Outcome
from secvma.kpcore.state import KState
from secvma.platform import Event, Platform, Stage2Abort, Vcpu

EMULATED_CLASSES = frozenset({Usage.EL1_PGD, Usage.EL1_PUD, Usage.EL1_PMD, Usage.EL1_PTE,
                              Usage.EL0_PGD, Usage.EL1_MOD_TXT, Usage.EL1_MOD_RO})


_ABORT_ECS = frozenset(int(e) for e in (EC.DABT_LOW, EC.DABT_CUR, EC.IABT_LOW, EC.IABT_CUR))


def _fsc(esr: int) -> int:
    """DFSC / IFSC (ISS[5:0]) of a data or instruction abort, 0 for any other class.

    Read straight from the syndrome bits: a full `decode_esr` record per stage-2 fault was a
    visible part of each emulated page-table store (issue 14)."""
    return esr & 0x3F if (esr >> 26) & 0x3F in _ABORT_ECS else 0


STALE_RETRIES = 3
"""Invalidate-and-retry rounds for one permission fault (same CPU, PC, page, syndrome) whose
leaf already permits the access; one more is refused. The leaf is read with the CPU's own
stage-2 XN semantics (`KState.feat_xnx`, from ID_AA64MMFR1_EL1); the bound stays as a backstop
(before the feature was read, a CPU with FEAT_XNX faulted again forever on a KERNEL-kind leaf)."""


def _allowed_now(st: KState, ev: Stage2Abort) -> bool:
    """Whether the current stage-2 leaf permits this access (the fault was a stale TLB)."""
    hit = st.s2.leaf(ev.ipa)
    if hit is None:
        return False
    from secvma.arch.walk import Perm

    perms = s2_perms(hit[2], 0 if ev.from_el0 else 1, feat_xnx=st.feat_xnx)
    need = Perm.X if ev.is_fetch else Perm.W if ev.is_write else Perm.R
    return need in perms


def handle_abort(st: KState, plat: Platform, cpu: Vcpu, ev: Stage2Abort) -> Outcome:
    """Route one stage-2 abort (see the module table)."""
    ipa = ev.ipa
    if not 0 <= ipa < 1 << 32:
        raise HypRefusal(Errno.EINVAL, "s2-fault", "IPA outside the 4 GiB space", ipa=ipa)
    pfn = ipa >> 12
    fsc = _fsc(ev.esr)
    permission = 0x0C <= fsc <= 0x0F
    if ev.s1ptw or not permission:
        result = map_page_host(st, ipa)
        if result == "mapped":
            return Outcome.RETRY
        if result == "forbidden":
            raise HypPanic(Errno.EPERM, "s2-el2-memory", "access to hypervisor memory",
                           ipa=ipa)
        st.s2.pending_flush.add(ipa & ~0xFFF)  # present: a stale translation fault
        return Outcome.RETRY
    if _allowed_now(st, ev):
        key = (cpu.elr, ipa & ~0xFFF, ev.esr)
        prev = st.stale_retries.get(cpu.index)
        n = prev[1] + 1 if prev is not None and prev[0] == key else 1
        if n > STALE_RETRIES:
            st.stale_retries.pop(cpu.index, None)
            raise HypRefusal(Errno.EPERM, "s2-stale", "permission fault persists after TLB "
                             "invalidation (does the CPU read stage-2 XN with FEAT_XNX?)",
                             ipa=ipa, esr=ev.esr)
        st.stale_retries[cpu.index] = (key, n)
        st.s2.pending_flush.add(ipa & ~0xFFF)
        return Outcome.RETRY
    st.stale_retries.pop(cpu.index, None)
    owner = st.pages.owner_of(pfn)
    usage = st.pages.usage_of(pfn)
    if ev.is_write and not ev.is_fetch and owner is Owner.HOST and st.installed:
        if usage in EMULATED_CLASSES:
            if st.policy.hardened:
                return kpt.emulate_hardened(st, plat, cpu, ev, usage)
            return kpt.emulate_c(st, plat, cpu, ev, usage)
        boot = st.boot
        if st.policy.quirks.pool_area_unvalidated and boot is not None \
                and in_pgtable_pool(boot, ipa):
            return kpt.emulate_c(st, plat, cpu, ev, usage)
        raise HypPanic(Errno.EPERM, "s2-write-protected",
                       f"write to a {usage.name} page", ipa=ipa, usage=usage)
    access = "fetch" if ev.is_fetch else "write" if ev.is_write else "read"
    raise HypRefusal(Errno.EPERM, "s2-permission", f"{access} not permitted on a "
                     f"{usage.name} page", ipa=ipa, usage=usage)


ESR_UNKNOWN = (EC.UNKNOWN << 26) | IL
"""ESR_EL1 of an "unknown reason" exception: what a refused MSR or other trap looks like."""


def inject_refusal(plat: Platform, cpu: Vcpu, ev: Event) -> None:
    """Deliver a refusal to EL1 as an exception the kernel can report (no stall).

    A refused access becomes a permission fault at the stage-1 level that maps FAR (data abort,
    WnR from the access; instruction abort for a fetch), anything else an "unknown" exception.
    """
    if isinstance(ev, Stage2Abort):
        access = AccessType.FETCH if ev.is_fetch else (
            AccessType.STORE if ev.is_write else AccessType.LOAD)
        hit = s1_translate(plat, cpu, ev.far, access)
        fsc = encode_fsc(FaultKind.PERMISSION, hit[1] if hit is not None else 3)
        if ev.is_fetch:
            esr = InstructionAbort(lower_el=ev.from_el0, il=True, fnv=False, ea=False,
                                   s1ptw=False, ifsc=fsc).encode()
        else:
            esr = DataAbort(lower_el=ev.from_el0, il=True, isv=False, sas=0, sse=False,
                            srt=0, sf=False, ar=False, vncr=False, fnv=False, ea=False,
                            cm=False, s1ptw=False, wnr=ev.is_write, dfsc=fsc).encode()
        cpu.inject_abort(esr, ev.far)
    else:
        cpu.inject_abort(ESR_UNKNOWN, 0)
