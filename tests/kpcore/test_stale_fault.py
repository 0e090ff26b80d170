"""A stage-2 permission fault on a leaf that (read as an ARMv8.0 CPU reads it) already permits
the access is taken for a stale TLB entry: invalidate and retry. On a CPU that reads XN[1:0]
with FEAT_XNX (cortex-a76) a KERNEL-kind leaf (XN = 01) is not EL1-executable, so the retry
faulted again forever: the testbed hung after HVC 6 at its first fetch from init text. A fault
that survives the invalidation is now refused (logged), never retried without end."""

from __future__ import annotations

from fakes import INIT, booted, kva

from secvma.arch.esr import InstructionAbort
from secvma.kpcore.faults import STALE_RETRIES
from secvma.kpcore.stage2 import PermKind, kind_of
from secvma.platform import PhysAddr, Stage2Abort


def _fetch_fault(ipa: int) -> Stage2Abort:
    esr = InstructionAbort(lower_el=True, il=True, fnv=False, ea=False, s1ptw=False,
                           ifsc=0x0F).encode()
    return Stage2Abort(esr, kva(ipa), PhysAddr(ipa), True, False, False, False)


def test_a_permission_fault_that_persists_after_invalidation_is_refused() -> None:
    m, hv = booted("hardened", "4k")
    ipa = INIT  # init text: stage-2 KERNEL kind (XN = 01), EL1-executable only on ARMv8.0
    assert m.load(kva(ipa))
    hit = hv.state.s2.leaf(ipa)
    assert hit is not None and kind_of(hit[2]) is PermKind.KERNEL
    m.cpu.elr = kva(ipa)
    for _ in range(STALE_RETRIES):
        m.event(_fetch_fault(ipa))
        assert not hv.refusals and not m.cpu.injected  # a stale entry: flushed and retried
    assert ("ipa", ipa) in m.plat.flushes
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
