"""A stage-2 permission fault on a leaf that (read with the CPU's own XN semantics) already
permits the access is taken for a stale TLB entry: invalidate and retry, a bounded number of
times. Before FEAT_XNX was read from ID_AA64MMFR1_EL1 the leaf was read as an ARMv8.0 CPU reads
it, so on a CPU with FEAT_XNX (cortex-a76, max) a KERNEL-kind leaf (XN = 01) looked
EL1-executable and the retry faulted again forever: the testbed hung after HVC 6 at its first
fetch from init text. Now such a fetch is refused at once (s2-permission), and a fault that
survives the invalidation anyway is refused (s2-stale), never retried without end."""

from __future__ import annotations

from fakes import INIT, booted, kva, lva

from secvma.arch.esr import InstructionAbort
from secvma.kpcore.faults import STALE_RETRIES
from secvma.kpcore.stage2 import PermKind, kind_of
from secvma.platform import CpuStart, PhysAddr, Stage2Abort


def _fetch_fault(ipa: int) -> Stage2Abort:
    esr = InstructionAbort(lower_el=True, il=True, fnv=False, ea=False, s1ptw=False,
                           ifsc=0x0F).encode()
    return Stage2Abort(esr, lva(ipa), PhysAddr(ipa), True, False, False, False)


ORDINARY = 0x4500_0000  # ordinary memory: stage-2 KERNEL kind (XN = 01)


def test_a_permission_fault_that_persists_after_invalidation_is_refused() -> None:
    """The CPU said no FEAT_XNX (CpuStart mmfr1 = 0), yet faults: bounded retries."""
    m, hv = booted("hardened", "4k")
    ipa = ORDINARY  # KERNEL kind: EL1-executable on ARMv8.0
    assert m.load(lva(ipa))
    hit = hv.state.s2.leaf(ipa)
    assert hit is not None and kind_of(hit[2]) is PermKind.KERNEL
    m.cpu.elr = lva(ipa)
    for _ in range(STALE_RETRIES):
        m.event(_fetch_fault(ipa))
        assert not hv.refusals and not m.cpu.injected  # a stale entry: flushed and retried
    assert ("ipa", ipa) in m.plat.flushes or ("all",) in m.plat.flushes or m.plat.flushes
    m.event(_fetch_fault(ipa))  # the same fault again at the same PC: not stale
    assert [r.rule for r in hv.refusals] == ["s2-stale"], hv.refusals
    assert m.cpu.injected and not hv.internal_errors


def test_a_different_fault_resets_the_count() -> None:
    m, hv = booted("hardened", "4k")
    assert m.load(kva(INIT)) and m.load(kva(INIT + 0x1000))
    m.cpu.elr = kva(INIT)
    for i in range(3 * STALE_RETRIES):
        m.event(_fetch_fault(INIT + 0x1000 * (i % 2)))  # alternating pages: each retry works
    assert not hv.refusals


def test_with_feat_xnx_from_the_id_register_an_el1_fetch_from_ordinary_memory_is_refused() -> None:
    """A CPU whose ID_AA64MMFR1_EL1.XNX says FEAT_XNX (CpuStart.mmfr1) reads XN = 01 as
    EL1-non-executable: an EL1 fetch from ordinary memory is stage 2's refusal at once
    (s2-permission), not a stale TLB entry retried. The CPU's name plays no part."""
    m, hv = booted("hardened", "4k")
    m.event(CpuStart(0x4008_0000, 0, 1 << 28))  # a restart reporting XNX = 1
    assert hv.state.feat_xnx
    assert m.load(lva(ORDINARY))
    m.cpu.elr = lva(ORDINARY)
    m.event(_fetch_fault(ORDINARY))
    assert [r.rule for r in hv.refusals] == ["s2-permission"], hv.refusals
    assert "fetch" in hv.refusals[0].reason and m.cpu.injected


def test_cpustart_reads_xnx_from_mmfr1_bits_31_28() -> None:
    assert not CpuStart(0, 0).feat_xnx
    assert not CpuStart(0, 0, 0x0FFF_FFFF).feat_xnx
    assert CpuStart(0, 0, 0x1000_0000).feat_xnx
