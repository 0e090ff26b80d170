"""Hypothesis: random EL1 programs (table stores of every form and width, hypercalls, MSRs)
against KPCore on the fake machine, every invariant checked after every step; and a fuzzer of
raw events asserting that no guest input makes `handle` raise or corrupt the state."""

from __future__ import annotations

from fakes import (
    EXTRA_FORMS,
    FORMS,
    IDMAP,
    PT_POOL,
    SWAPPER,
    TEXT,
    VMALLOC,
    FakeMachine,
    lva,
    page_desc,
    slot_of,
    table_desc,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from secvma.kpcore import make_policy
from secvma.kpcore.invariants import check
from secvma.platform import (
    CpuStart,
    Hvc,
    OtherTrap,
    PhysAddr,
    Smc,
    Stage2Abort,
    SysReg,
    SysregTrap,
)

POOL_PAGES = [PT_POOL + i * 0x1000 for i in range(1, 24)]
PAGES = [0x4500_0000 + i * 0x1000 for i in range(8)] + [TEXT, TEXT + 0x1000, SWAPPER]
WIDTHS = {"str": (1, 2, 4, 8), "stur": (1, 2, 4, 8), "str_reg": (1, 2, 4, 8),
          "str_pre": (4, 8), "str_post": (4, 8), "sttr": (1, 2, 4, 8), "stp": (4, 8),
          "stp_xzr": (8,), "stnp": (8,), "stxr": (4, 8), "stlr": (1, 2, 4, 8), "dc_zva": (8,),
          "stlxr": (4, 8), "cas": (4, 8), "swp": (1, 2, 4, 8), "ldadd": (4, 8), "str_q": (16,),
          "st1": (16,)}


def _invs(m: FakeMachine, hv: object, prefix: str) -> list[str]:
    st_ = hv.state  # type: ignore[attr-defined]
    return [str(v) for v in check(st_, m.plat, full=True) if v.inv.startswith(prefix)]


class KPCoreMachine(RuleBasedStateMachine):
    """Host actions against hardened KPCore; one @invariant per INV-*."""

    tables = Bundle("tables")

    def __init__(self) -> None:
        super().__init__()
        self.hv = make_policy("hardened", s2="huge")
        self.m = FakeMachine(self.hv)

    @initialize(target=tables)
    def first_table(self) -> int:
        return slot_of(self.m, VMALLOC, 2) & ~0xFFF

    @rule(target=tables, table=tables, idx=st.integers(0, 511),
          new=st.sampled_from(POOL_PAGES))
    def link_table(self, table: int, idx: int, new: int) -> int:
        self.m.store(lva(table + 8 * idx), table_desc(new))
        return new

    @rule(table=tables, idx=st.integers(0, 511), dest=st.sampled_from(PAGES + POOL_PAGES),
          pxn=st.booleans(), form=st.sampled_from(FORMS + EXTRA_FORMS), data=st.data())
    def store(self, table: int, idx: int, dest: int, pxn: bool, form: str,
              data: st.DataObject) -> None:
        width = data.draw(st.sampled_from(WIDTHS[form]))
        value = data.draw(st.sampled_from([0, page_desc(dest, pxn=pxn), table_desc(dest),
                                           page_desc(dest) & 0xFFFF_FFFF,
                                           data.draw(st.integers(0, (1 << 64) - 1))]))
        off = data.draw(st.sampled_from([0, 4, 6])) if width < 8 else 0
        if idx == 511 and data.draw(st.booleans()):  # unaligned, crossing into the next page
            off = data.draw(st.sampled_from([1, 4, 7]))
        self.m.store(lva(table + 8 * idx + off), value, width, form, value2=value)

    @rule(table=tables, idx=st.integers(0, 511))
    def unmap(self, table: int, idx: int) -> None:
        self.m.store(lva(table + 8 * idx), 0)

    @rule(nr=st.sampled_from([0, 1, 2, 5, 6, 7, 30, 33, 34, 35, 99]),
          a=st.sampled_from(POOL_PAGES + PAGES + [0, 1, (1 << 64) - 1]), b=st.integers(0, 70000))
    def hvc(self, nr: int, a: int, b: int) -> None:
        self.m.hvc(nr, a, b)

    @rule(reg=st.sampled_from([SysReg.TTBR0_EL1, SysReg.TTBR1_EL1, SysReg.SCTLR_EL1,
                               SysReg.TCR_EL1, SysReg.MAIR_EL1, SysReg.CONTEXTIDR_EL1,
                               SysReg.ESR_EL1]),
          value=st.sampled_from([SWAPPER, IDMAP, 0, 1, PT_POOL + 0x1000]))
    def msr(self, reg: SysReg, value: int) -> None:
        self.m.msr(reg, value)

    @invariant()
    def no_internal_error(self) -> None:
        assert not self.hv.internal_errors, self.hv.internal_errors
        assert self.m.plat.halted is None

    @invariant()
    def inv_el2(self) -> None:
        assert not _invs(self.m, self.hv, "INV-EL2")

    @invariant()
    def inv_kpt_ro(self) -> None:
        assert not _invs(self.m, self.hv, "INV-KPT-RO")

    @invariant()
    def inv_code_ro(self) -> None:
        assert not _invs(self.m, self.hv, "INV-CODE-RO")

    @invariant()
    def inv_s2_wx(self) -> None:
        assert not _invs(self.m, self.hv, "INV-S2-WX")

    @invariant()
    def inv_type(self) -> None:
        assert not _invs(self.m, self.hv, "INV-TYPE")

    @invariant()
    def inv_pxn(self) -> None:
        assert not _invs(self.m, self.hv, "INV-PXN")

    @invariant()
    def inv_user(self) -> None:
        assert not _invs(self.m, self.hv, "INV-USER")

    @invariant()
    def inv_roots(self) -> None:
        assert not _invs(self.m, self.hv, "INV-ROOTS")

    @invariant()
    def inv_count(self) -> None:
        assert not _invs(self.m, self.hv, "INV-COUNT")

    @invariant()
    def inv_block(self) -> None:
        assert not _invs(self.m, self.hv, "INV-BLOCK")


KPCoreMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestKPCoreStateful = KPCoreMachine.TestCase


u64 = st.integers(0, (1 << 64) - 1)
events = st.one_of(
    st.builds(Hvc, st.integers(0, 0xFFFF), st.tuples(*[u64] * 8)),
    st.builds(Smc, st.integers(0, 0xFFFF), st.tuples(*[u64] * 4)),
    st.builds(Stage2Abort, st.integers(0, (1 << 32) - 1), u64,
              st.integers(0, (1 << 40)).map(PhysAddr), st.booleans(), st.booleans(),
              st.booleans(), st.booleans()),
    st.builds(SysregTrap, st.tuples(st.integers(0, 3), st.integers(0, 7), st.integers(0, 15),
                                    st.integers(0, 15), st.integers(0, 7)),
              st.none() | st.sampled_from(list(SysReg)), st.booleans(), st.integers(0, 31), u64),
    st.builds(OtherTrap, u64, u64),
    st.builds(CpuStart, u64, u64),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(["hardened", "secvma2024"]), evs=st.lists(events, max_size=12),
       regs=st.lists(u64, min_size=31, max_size=31), elr=u64)
def test_fuzzed_events_never_crash_the_hypervisor(policy: str, evs: list[object],
                                                  regs: list[int], elr: int) -> None:
    """Arbitrary events and register values: no exception escapes, no internal error, and the
    invariants that do not depend on the guest's own table contents still hold."""
    hv = make_policy(policy)
    m = FakeMachine(hv)
    m.cpu.regs[:] = regs
    m.cpu.elr = elr
    for ev in evs:
        m.plat.halted = None
        hv.handle(m.plat, m.cpu, ev)  # type: ignore[arg-type]
        assert not hv.internal_errors, hv.internal_errors
    bad = [v for v in check(hv.state, m.plat, full=True)
           if v.inv in ("INV-EL2", "INV-KPT-RO", "INV-CODE-RO", "INV-S2-WX")]
    if policy == "hardened":
        bad += [v for v in check(hv.state, m.plat, full=True) if v.inv in ("INV-BLOCK",)]
    assert not bad, bad
