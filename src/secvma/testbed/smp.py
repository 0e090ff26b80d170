"""Two CPUs at once on the testbed: the race block and the primitives a race is built from.

The testbed kernel starts its secondary CPUs with PSCI CPU_ON (`guest/testbed/kernel/smp.c`);
each polls its own command slot, so `TestbedSession(ncpus=2).on_cpu(1)` runs any primitive on
CPU 1. A race puts a spinner on a secondary (`RACE_SPIN`: repeat one store, an indirect store
or HVC 35 until told to stop) and arms CPU 0's next command: CPU 0 waits until the spinner is
ready, says go, waits for `min_iters` of its iterations, samples the spinner's counter right
before and right after its own operation, reads `watch` (a kernel VA) and says stop. All of
it is plain memory (`struct secvma_race`), so the overlap is measured, not assumed: `overlap`
is the number of iterations the other CPU completed while CPU 0 was inside its operation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from secvma.hvabi import Op
from secvma.platform import PhysAddr
from secvma.testbed.commands import Command, CommandResult, TestbedSession

RACE_FIELDS = ("ready", "go", "stop", "iters", "arm", "min_iters", "before", "after",
               "hvc_before", "hvc_after", "watch", "watch_val", "last", "cpu_mask")
"""`struct secvma_race` (kernel.h), u64 each, in this order."""
_RACE = struct.Struct(f"<{len(RACE_FIELDS)}Q")
RACE_ARM_CMD = 1
SPIN_STORE, SPIN_INDIRECT, SPIN_HVC35 = 0, 1, 2


def spin_store(va: int, value: int) -> Command:
    """Spin `str value, [va]` (8 bytes, ISV = 1) until stopped; a fault ends it."""
    return Command(Op.RACE_SPIN, (va, value, SPIN_STORE, 0))


def spin_store_indirect(ptr_va: int, value: int, offset: int) -> Command:
    """Spin `p = *ptr_va; if p: str value, [p + offset]` (follows a pointer the kernel sets)."""
    return Command(Op.RACE_SPIN, (ptr_va, value, SPIN_INDIRECT, offset))


def spin_hvc35(root: int, asid: int) -> Command:
    """Spin HVC 35 (switch TTBR0 to `root`); `RaceResult.last` is the last x0."""
    return Command(Op.RACE_SPIN, (root, asid, SPIN_HVC35, 0))


def race_state(s: TestbedSession) -> dict[str, int]:
    raw = s.platform.read(PhysAddr(s.image.pa("secvma_race")), _RACE.size)
    return dict(zip(RACE_FIELDS, _RACE.unpack(raw), strict=True))


def cpus_online(s: TestbedSession) -> int:
    """The kernel's mask of CPUs that came up (bit n: CPU n)."""
    return race_state(s)["cpu_mask"]


@dataclass(frozen=True)
class RaceResult:
    spinner: CommandResult
    """The secondary's RACE_SPIN: `ret[0]` iterations, FAULT if its access faulted."""
    main: CommandResult
    """CPU 0's command."""
    state: dict[str, int]
    """`struct secvma_race` afterwards."""

    @property
    def overlap(self) -> int:
        """Spinner iterations completed while CPU 0 was inside its operation."""
        return self.state["after"] - self.state["before"]

    @property
    def overlap_hvc30(self) -> int:
        """Spinner iterations completed while CPU 0 was inside HVC 30 (module loads)."""
        return self.state["hvc_after"] - self.state["hvc_before"]

    def describe(self) -> str:
        sp = self.spinner
        how = sp.status.name.lower() + (f" (ESR {sp.esr:#x})" if sp.faulted else "")
        return (f"CPU1 spun {self.state['iters']} times ({how}), {self.overlap} of them while "
                f"CPU0 was in its operation")


def race(s: TestbedSession, spin: Command, main: Command, *, cpu: int = 1,
         min_iters: int = 0, watch: int = 0) -> RaceResult:
    """Run `spin` on CPU `cpu` and `main` on CPU 0 at the same time (see the module doc)."""
    if not cpus_online(s) >> cpu & 1:
        raise RuntimeError(f"CPU {cpu} is not online (boot the session with ncpus > {cpu})")
    init = dict.fromkeys(RACE_FIELDS, 0)
    init.update(arm=RACE_ARM_CMD, min_iters=min_iters, watch=watch,
                cpu_mask=cpus_online(s))
    s.platform.write(PhysAddr(s.image.pa("secvma_race")),
                     _RACE.pack(*(init[f] for f in RACE_FIELDS)))
    pending = s.submit_on(cpu, spin)
    main_result = s.call(main)
    spin_result = pending.wait(s.command_timeout_s)
    return RaceResult(spin_result, main_result, race_state(s))
