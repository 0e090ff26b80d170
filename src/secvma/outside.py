"""What every hypervisor here does with an access outside its identity map.

Hypervisor memory, or an IPA with no memory behind it: the access gets a synchronous external
abort in EL1 (Arm ARM D17.2.37: FSC 0x10, IL set, EC by fetch/data and current/lower EL).
A guest without a usable vector (VBAR_EL1 unset) then faults again on the vector fetch
forever; after `STUCK_REPEATS` identical faults (same PC and IPA) the machine is halted with
the PC, instead of spinning until a timeout.
"""

from __future__ import annotations

from secvma.platform import Platform, Stage2Abort, Vcpu

ESR_DABT_CUR_EXT = (0x25 << 26) | (1 << 25) | 0x10
ESR_DABT_LOW_EXT = (0x24 << 26) | (1 << 25) | 0x10
ESR_IABT_CUR_EXT = (0x21 << 26) | (1 << 25) | 0x10
ESR_IABT_LOW_EXT = (0x20 << 26) | (1 << 25) | 0x10

STUCK_REPEATS = 8
"""The same stage-2 fault (PC, IPA) this many times in a row means the guest cannot progress."""


class OutsideMapGuard:
    """Abort accesses outside the map into EL1; halt a guest stuck on the same fault."""

    def __init__(self) -> None:
        self._last: tuple[int, int, int] = (-1, -1, 0)

    def abort(self, platform: Platform, cpu: Vcpu, ev: Stage2Abort) -> None:
        pc, ipa, n = self._last
        n = n + 1 if (pc, ipa) == (cpu.elr, ev.ipa) else 1
        self._last = (cpu.elr, ev.ipa, n)
        if n >= STUCK_REPEATS:
            platform.halt(f"guest stuck: {n} identical stage-2 faults at PC {cpu.elr:#x}, "
                          f"IPA {ev.ipa:#x} (no usable exception vector?)")
            return
        if ev.is_fetch:
            esr = ESR_IABT_LOW_EXT if ev.from_el0 else ESR_IABT_CUR_EXT
        else:
            esr = ESR_DABT_LOW_EXT if ev.from_el0 else ESR_DABT_CUR_EXT
        cpu.inject_abort(esr, ev.far)
