"""User page-table roots: HVC 33 / 34 registry and HVC 35, the only way to load TTBR0 (§4, §5.3).

C: sekvm/HostPtSwitch.c:el2_do_alloc_el0_pgd, el2_do_free_el0_pgd, el2_do_switch_mm.

    HVC 33 alloc(pa):  page owner=HOST usage=NONE -> usage=EL0_PGD, zeroed, stage 2 RO
                       in two trips: the claim rewinds ELR (x0 untouched), the CPU runs the
                       broadcast TLBI and re-executes HVC 33, which zeroes the page again and
                       registers it (a stale-TLB store from another CPU in between is
                       discarded; issue 13). Meanwhile HVC 33/34/35 of the page: EBUSY
    HVC 34 free(pa):   usage=EL0_PGD -> NONE, zeroed, stage 2 RW
                       (hardened: EBUSY while a CPU's TTBR0 holds it)
    HVC 35 switch(ttbr0, asid):
                       TTBR0 := empty_zero_page; TTBR1 := swapper | asid << 48; TTBR0 := ttbr0
                       requires TVM on this CPU (else -1), TTBR1 == swapper, ttbr0 an EL0_PGD

Codes (hardened, x0 = -code): EINVAL unaligned / outside RAM / ASID bits in ttbr0;
EPERM wrong owner or class; EBUSY live root; ENOMEM stage-2 pool. secvma2024: HVC 33/34 never
write x0 and silently ignore a wrong class (a message only), HVC 35 panics.
"""

from __future__ import annotations

from secvma.kpcore.hostmem import check_claim, commit_claim, commit_release_page, mark_unsettled
from secvma.kpcore.pages import Owner, Usage
from secvma.kpcore.refusal import Errno, HypPanic, HypRefusal
from secvma.kpcore.state import KState
from secvma.kpcore.sysregs import TTBR_BADDR
from secvma.platform import Platform, SysReg, Vcpu

MASK64 = (1 << 64) - 1


def _page(st: KState, pa: int, rule: str) -> int:
    if pa % 4096 or not st.pages.in_ram(pa):
        raise HypRefusal(Errno.EINVAL, rule, "not a page-aligned RAM address", pa=pa)
    return pa >> 12


def alloc_el0_pgd(st: KState, plat: Platform, cpu: Vcpu, pa: int) -> bool:
    """HVC 33. C: el2_do_alloc_el0_pgd. False: claimed, HVC 33 re-executed (see below).

    C invalidates the TLBs inside the handler, before it zeroes the page; here the broadcast
    TLBI runs in the trampoline after the answer, so another CPU could still write the page
    through a stale TLB entry after the zeroing (issue 13, race-s2-stale). The claim therefore
    rewinds ELR: the CPU runs its TLBI, re-executes HVC 33, the page is zeroed again at that
    trap (`hostmem.settle`) and only then becomes a user root.
    """
    rule = "hvc33-alloc-el0-pgd"
    pfn = _page(st, pa, rule) if st.policy.hardened else pa >> 12
    owner = st.pgd_pending.get(pfn)
    if owner is not None:
        if owner != cpu.index:
            raise HypRefusal(Errno.EBUSY, rule, "another CPU is registering this page",
                             pa=pa, cpu=owner)
        del st.pgd_pending[pfn]  # the retry: settled at the start of this trap
        st.user_roots.add(pfn)
        return True
    if st.pages.owner_of(pfn) is not Owner.HOST:
        raise HypRefusal(Errno.EPERM, rule, "page not owned by the host", pa=pa)
    check_claim(st, pfn, Usage.EL0_PGD, rule=rule)
    commit_claim(st, plat, pfn, Usage.EL0_PGD)
    mark_unsettled(st, pfn, cpu.index)
    st.pgd_pending[pfn] = cpu.index
    cpu.set_elr(cpu.elr - 4)  # HVC's ELR is the next instruction: run it again
    return False


def free_el0_pgd(st: KState, plat: Platform, pa: int) -> None:
    """HVC 34. C: el2_do_free_el0_pgd."""
    rule = "hvc34-free-el0-pgd"
    pfn = _page(st, pa, rule) if st.policy.hardened else pa >> 12
    if st.pages.usage_of(pfn) is not Usage.EL0_PGD:
        raise HypRefusal(Errno.EPERM, rule, "not a registered user PGD", pa=pa)
    if pfn in st.pgd_pending:
        raise HypRefusal(Errno.EBUSY, rule, "user PGD is still being registered", pa=pa)
    if st.policy.hardened:
        for idx, c in st.cpus.items():
            if (c.ttbr0 & TTBR_BADDR) >> 12 == pfn:
                raise HypRefusal(Errno.EBUSY, rule, "user PGD is live in a CPU's TTBR0",
                                 pa=pa, cpu=idx)
    commit_release_page(st, plat, pfn)
    st.user_roots.discard(pfn)


def do_switch_mm(st: KState, cpu: Vcpu, ttbr0: int, asid: int) -> int:
    """HVC 35: x0 result (0, or -1 without TVM). C: el2_do_switch_mm."""
    rule = "hvc35-switch-mm"
    c = st.cpu(cpu.index)
    boot = st.boot
    if not c.tvm or boot is None:
        return MASK64  # -1: let the host switch natively (C behaviour)
    deny = HypRefusal if st.policy.hardened else HypPanic
    base0 = ttbr0 & TTBR_BADDR if st.policy.hardened else ttbr0
    if st.policy.hardened and ttbr0 & ~TTBR_BADDR & ~1:
        raise deny(Errno.EINVAL, rule, "ttbr0 carries bits outside the table address",
                   ttbr0=ttbr0)
    ttbr1 = cpu.read_sysreg(SysReg.TTBR1_EL1)
    base1 = ttbr1 & TTBR_BADDR
    if st.pages.owner_of(base0 >> 12) is not Owner.HOST \
            or st.pages.owner_of(base1 >> 12) is not Owner.HOST:
        raise deny(Errno.EPERM, rule, "roots must be host pages", ttbr0=ttbr0, ttbr1=ttbr1)
    if base1 != boot.swapper_pg_dir:
        raise deny(Errno.EPERM, rule, "TTBR1 is not swapper_pg_dir", ttbr1=ttbr1)
    if base0 == boot.swapper_pg_dir or st.pages.usage_of(base0 >> 12) is not Usage.EL0_PGD:
        raise deny(Errno.EPERM, rule, "ttbr0 is not a registered user PGD", ttbr0=ttbr0,
                   usage=st.pages.usage_of(base0 >> 12))
    if (base0 >> 12) in st.pgd_pending:
        raise deny(Errno.EBUSY, rule, "ttbr0 is still being registered (HVC 33)", ttbr0=ttbr0)
    if st.policy.hardened and not 0 <= asid <= 0xFFFF:
        raise deny(Errno.EINVAL, rule, "ASID wider than 16 bits", asid=asid)
    new_ttbr1 = base1 | ((asid & 0xFFFF) << 48)
    cpu.write_sysreg(SysReg.TTBR0_EL1, boot.empty_zero_page)
    cpu.write_sysreg(SysReg.TTBR1_EL1, new_ttbr1)
    cpu.write_sysreg(SysReg.TTBR0_EL1, ttbr0)
    c.ttbr0, c.ttbr1 = ttbr0, new_ttbr1
    c.boot_window = False
    c.switched = True
    return 0
