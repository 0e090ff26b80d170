"""The interrupt guard's policy side (kpcore/guard.py) on the fake machine: what is pinned, what a trip does.

The fake vCPU's `guard_check()` reports what the machine's trampoline would at an interrupt
exit (the real check runs in tests/machine/test_guard.py).
"""

from __future__ import annotations

from dataclasses import replace

from fakes import DATA, TEXT, FakeMachine, FakePlatform, FakeVcpu, booted, kva, lva

from secvma.kpcore import guard
from secvma.kpcore.core import KPCore
from secvma.kpcore.policy import policy_named
from secvma.platform import GuardTrip, SysReg

VECTORS = kva(TEXT + 0x800)


def _tripped(m: FakeMachine) -> GuardTrip:
    trip = m.cpu.guard_check()
    assert trip is not None
    m.event(trip)
    return trip


def test_hardened_arms_the_guard_and_pins_kde_at_cpu_start() -> None:
    """hardened: every CPU start routes interrupts through EL2 and pins MDSCR_EL1.KDE = 0."""
    m, _ = booted("hardened")
    assert m.cpu.guard_us == guard.INTERVAL_US
    assert m.cpu.pins[SysReg.MDSCR_EL1] == (guard.MDSCR_KDE, 0, 0)


def test_secvma2024_arms_nothing_quirk() -> None:
    """secvma2024 (Quirks.unguarded_el1_regs): no guard, nothing pinned - SECvma's window."""
    m, _ = booted("secvma2024")
    m.load(lva(0x4500_0000))
    assert m.cpu.guard_us is None and not m.cpu.pins
    m.cpu.sysregs[SysReg.VBAR_EL1] = VECTORS + 0x80
    assert m.cpu.guard_check() is None  # nothing would ever notice before the next trap


def test_vbar_pinned_once_learned() -> None:
    """hardened: the first trap after install with VBAR in kernel text pins it on that CPU."""
    m, hv = booted("hardened")
    m.load(lva(0x4500_0000))
    assert hv.state.vbar == VECTORS
    assert m.cpu.pins[SysReg.VBAR_EL1] == ((1 << 64) - 1, VECTORS, VECTORS)


def test_forged_vbar_restored_by_the_guard() -> None:
    """hardened: a VBAR moved without any trap is restored at the interrupt exit, refusal `vbar`."""
    m, hv = booted("hardened")
    m.load(lva(0x4500_0000))
    m.cpu.sysregs[SysReg.VBAR_EL1] = VECTORS + 0x80
    trip = _tripped(m)
    assert (trip.reg, trip.value, trip.pinned) == (SysReg.VBAR_EL1, VECTORS + 0x80, VECTORS)
    assert m.cpu.sysregs[SysReg.VBAR_EL1] == VECTORS
    assert hv.refusals[-1].rule == "vbar" and hv.refusals[-1].values["value"] == VECTORS + 0x80
    assert m.cpu.guard_check() is None


def test_kde_cleared_other_mdscr_bits_kept() -> None:
    """hardened: MDSCR_EL1.KDE set by the kernel is cleared, MDE (user breakpoints) left alone."""
    m, hv = booted("hardened")
    m.cpu.sysregs[SysReg.MDSCR_EL1] = guard.MDSCR_KDE | (1 << 15)
    _tripped(m)
    assert m.cpu.sysregs[SysReg.MDSCR_EL1] == 1 << 15
    assert hv.refusals[-1].rule == "mdscr-kde"


def test_guard_action_halt_stops_the_machine() -> None:
    """Policy.guard_action = "halt": a forged register halts instead of being restored."""
    hv = KPCore(replace(policy_named("hardened"), guard_action="halt"))
    m = FakeMachine(hv)
    m.load(lva(0x4500_0000))
    m.cpu.sysregs[SysReg.VBAR_EL1] = lva(DATA)
    _tripped(m)
    assert m.plat.halted and "VBAR_EL1" in m.plat.halted
    assert m.cpu.sysregs[SysReg.VBAR_EL1] == lva(DATA)
    assert hv.refusals[-1].rule == "vbar"


def test_learner_admits_two_tables_in_text_and_refuses_a_third() -> None:
    """transparent's VbarLearner: the kernel's vectors and KPTI's alias, then nothing new."""
    plat, cpu = FakePlatform(), FakeVcpu()
    refusals: list = []
    learner = guard.VbarLearner()

    def in_text(va: int) -> bool:
        return va >= 0xFFFF_0000_0000_0000

    for value in (0xFFFF_8000_0801_0800, 0xFFFF_FBFF_FDBF_7800):
        cpu.sysregs[SysReg.VBAR_EL1] = value
        learner.watch(refusals, plat, cpu, in_text, policy="transparent")
    assert learner.tables == [0xFFFF_8000_0801_0800, 0xFFFF_FBFF_FDBF_7800] and not refusals
    assert cpu.pins[SysReg.VBAR_EL1][1:] == (0xFFFF_8000_0801_0800, 0xFFFF_FBFF_FDBF_7800)
    cpu.sysregs[SysReg.VBAR_EL1] = 0xFFFF_8000_0802_0000  # in text, aligned, but a third table
    trip = cpu.guard_check()
    assert trip is not None
    learner.on_trip(refusals, plat, cpu, trip, in_text, policy="transparent")
    assert refusals[-1].rule == "vbar" and cpu.sysregs[SysReg.VBAR_EL1] == 0xFFFF_8000_0801_0800


def test_learner_refuses_a_second_table_next_to_the_first() -> None:
    """Without KPTI (-cpu max) the kernel uses one table; VBAR + 0x800 (aligned, in text) is
    the VBAR_WRITE attack, not KPTI's alias (in the fixmap): before, it was learned."""
    plat, cpu = FakePlatform(), FakeVcpu()
    refusals: list = []
    learner = guard.VbarLearner()

    def in_text(va: int) -> bool:
        return va >= 0xFFFF_0000_0000_0000

    cpu.sysregs[SysReg.VBAR_EL1] = 0xFFFF_8000_0801_0800
    learner.watch(refusals, plat, cpu, in_text, policy="transparent")
    cpu.sysregs[SysReg.VBAR_EL1] = 0xFFFF_8000_0801_1000
    trip = cpu.guard_check()
    assert trip is not None
    learner.on_trip(refusals, plat, cpu, trip, in_text, policy="transparent")
    assert learner.tables == [0xFFFF_8000_0801_0800]
    assert refusals[-1].rule == "vbar" and cpu.sysregs[SysReg.VBAR_EL1] == 0xFFFF_8000_0801_0800


def test_learner_follows_a_booting_cpu_until_it_holds_a_table() -> None:
    """A secondary locks before its kernel sets VBAR: pinned to "what it holds", never refused."""
    plat, cpu = FakePlatform(), FakeVcpu(index=1)
    refusals: list = []
    learner = guard.VbarLearner(tables=[0xFFFF_8000_0801_0800])

    def in_text(va: int) -> bool:
        return va >= 0xFFFF_0000_0000_0000

    learner.watch(refusals, plat, cpu, in_text, policy="transparent")  # VBAR still 0
    assert cpu.pins[SysReg.VBAR_EL1][1] == 0 and not refusals
    cpu.sysregs[SysReg.VBAR_EL1] = 0x1000  # not a table: followed, not refused (boot is trusted)
    trip = cpu.guard_check()
    assert trip is not None
    learner.on_trip(refusals, plat, cpu, trip, in_text, policy="transparent")
    assert not refusals and cpu.pins[SysReg.VBAR_EL1][1] == 0x1000
    cpu.sysregs[SysReg.VBAR_EL1] = 0xFFFF_8000_0801_0800
    trip = cpu.guard_check()
    assert trip is not None
    learner.on_trip(refusals, plat, cpu, trip, in_text, policy="transparent")
    assert 1 in learner.seen_on and cpu.pins[SysReg.VBAR_EL1][1] == 0xFFFF_8000_0801_0800
    learner.restart(cpu)
    assert 1 not in learner.seen_on
