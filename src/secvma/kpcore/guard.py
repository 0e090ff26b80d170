"""The interrupt guard's policy side: which EL1 registers no trap covers are pinned, and to what.

HCR_EL2.TVM traps writes to SCTLR/TTBR/TCR/MAIR/AMAIR/CONTEXTIDR/ESR/FAR/AFSR, but not to
VBAR_EL1 or the debug control MDSCR_EL1 (docs/el1-registers.md has the whole list). The
machine's guard (`Vcpu.arm_guard`) enters EL2 on every physical interrupt and at least once
per `INTERVAL_US`, compares the pinned registers there (no Python round trip when they
match) and reports a mismatch as `GuardTrip`; this module decides what is pinned and what a
trip does. The machine checks; the policy decides.

    register     pinned to                                  on a mismatch (restore policy)
    VBAR_EL1     the vector table learned after install     restored, refusal "vbar"
                 (testbed: in kernel text; transparent: up
                 to two 2 KB-aligned tables in kernel text,
                 the kernel's and KPTI's trampoline alias)
    MDSCR_EL1    KDE = 0 (no debug exceptions at EL1)       KDE cleared, refusal "mdscr-kde"

`secvma2024` arms nothing (Quirks.unguarded_el1_regs: SECvma's gap, shown by the
`vbar-forge` attack); with `Policy.guard_action == "halt"` a trip stops the machine instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from secvma.kpcore.refusal import Errno, Outcome, Refusal, log
from secvma.platform import GuardTrip, Platform, SysReg, Vcpu

INTERVAL_US = 10_000
"""Bound between two guard checks on a CPU whose kernel masks or disables all its interrupts."""

MASK64 = (1 << 64) - 1
MDSCR_KDE = 1 << 13
VBAR_ALIGN = 0x800
RULES = {SysReg.VBAR_EL1: "vbar", SysReg.MDSCR_EL1: "mdscr-kde"}


def arm(cpu: Vcpu, interval_us: int = INTERVAL_US) -> None:
    """Route this CPU's interrupts through EL2 and pin what needs no learning (MDSCR.KDE)."""
    cpu.arm_guard(interval_us)
    cpu.pin_sysreg(SysReg.MDSCR_EL1, 0, MDSCR_KDE)


def trip(refusals: list[Refusal], plat: Platform, cpu: Vcpu, ev: GuardTrip, *, policy: str,
         action: str, restore_to: int | None = None) -> None:
    """A pinned register moved: log the named refusal, then restore it or halt (per `action`).

    `restore_to` overrides the value written back (VBAR: the first learned table).
    """
    rule = RULES.get(ev.reg, "guard")
    good = restore_to if restore_to is not None else (ev.value & ~ev.mask) | ev.pinned
    outcome = Outcome.PANIC if action == "halt" else Outcome.REFUSED
    rec = Refusal(rule, Errno.EPERM, f"{ev.reg.name} changed without a trap; "
                  + ("machine halted" if action == "halt" else "restored"),
                  outcome, cpu.index, cpu.elr, {"value": ev.value, "pinned": good})
    if len(refusals) < 10_000:
        refusals.append(rec)
    log.info("guard: %s", rec)
    if action == "halt":
        plat.halt(f"kpcore ({policy}): {ev.reg.name} forged ({ev.value:#x}, pinned {good:#x})")
        return
    cpu.write_sysreg(ev.reg, good)


@dataclass
class VbarLearner:
    """VBAR_EL1 values an unmodified kernel uses, learned once it runs on its own tables.

    Linux with KPTI switches VBAR_EL1 between its vector table and the trampoline's alias on
    every return to EL0, so a single pinned value would trip constantly. The first `limit`
    distinct values that are 2 KB aligned and translate (stage 1, EL1 fetch) into kernel text
    are accepted; anything else is forged. A second table must lie at least `min_gap` from the
    first: KPTI's alias is in the fixmap, far from the image's vectors. Without KPTI (`-cpu max`:
    E0PD makes it unnecessary) the kernel uses one table, and the attack's VBAR + 0x800 (still
    2 KB aligned kernel text) used to be learned as the second (VBAR_WRITE succeeded on max).
    """

    limit: int = 2
    min_gap: int = 1 << 30
    tables: list[int] = field(default_factory=list)
    pinned_on: set[int] = field(default_factory=set)
    seen_on: set[int] = field(default_factory=set)  # CPUs that held a learned table

    def admit(self, value: int, in_text: Callable[[int], bool]) -> bool:
        """True if `value` is (or now becomes) a learned vector table.

        `in_text` (a stage-1 walk) runs only for a value not learned yet: this is on every trap.
        """
        if value in self.tables:
            return True
        if self.tables and abs(value - self.tables[0]) < self.min_gap:
            return False
        if value % VBAR_ALIGN == 0 and len(self.tables) < self.limit and in_text(value):
            self.tables.append(value)
            self.pinned_on.clear()  # every CPU's pin needs the new value
            return True
        return False

    def pin(self, cpu: Vcpu) -> None:
        """Pin this CPU's VBAR to the learned tables (once per change of the set)."""
        if self.tables and cpu.index not in self.pinned_on:
            first = self.tables[0]
            cpu.pin_sysreg(SysReg.VBAR_EL1, first, alt=self.tables[-1])
            self.pinned_on.add(cpu.index)

    def watch(self, refusals: list[Refusal], plat: Platform, cpu: Vcpu, in_text: Callable[[int], bool],
              *, policy: str, action: str = "restore") -> None:
        """At a trap of a CPU that runs on the kernel's own tables: learn, check and pin VBAR."""
        self._judge(refusals, plat, cpu, cpu.read_sysreg(SysReg.VBAR_EL1), in_text, policy, action)

    def on_trip(self, refusals: list[Refusal], plat: Platform, cpu: Vcpu, ev: GuardTrip,
                in_text: Callable[[int], bool], *, policy: str, action: str = "restore") -> None:
        """A `GuardTrip`: VBAR goes through the same judgement; any other register is refused."""
        if ev.reg is SysReg.VBAR_EL1:
            self._judge(refusals, plat, cpu, ev.value, in_text, policy, action)
        else:
            trip(refusals, plat, cpu, ev, policy=policy, action=action)

    def _judge(self, refusals: list[Refusal], plat: Platform, cpu: Vcpu, value: int,
               in_text: Callable[[int], bool], policy: str, action: str) -> None:
        """Learn or refuse `value`, then pin so that the next change trips.

        A CPU is refused a value only once it has held a learned table: a secondary locks
        before its kernel sets VBAR_EL1 (still the reset value), so until then the pin is
        "what it holds now" and each change comes back here to be judged.
        """
        i = cpu.index
        if self.admit(value, in_text):
            if i not in self.seen_on:
                self.seen_on.add(i)
                self.pinned_on.discard(i)
        elif i in self.seen_on:
            t = self.tables
            trip(refusals, plat, cpu, GuardTrip(SysReg.VBAR_EL1, value, t[0], MASK64, t[-1]),
                 policy=policy, action=action, restore_to=t[0])
        else:
            cpu.pin_sysreg(SysReg.VBAR_EL1, value)  # tell me when it moves
            self.pinned_on.discard(i)
            return
        self.pin(cpu)

    def restart(self, cpu: Vcpu) -> None:
        """The CPU (re)starts: its VBAR is free again until it holds a learned table."""
        self.pinned_on.discard(cpu.index)
        self.seen_on.discard(cpu.index)
