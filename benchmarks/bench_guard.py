#!/usr/bin/env python3
"""The interrupt guard (issue 15): its interval, what it costs, measured in one run.

Usage: python3 benchmarks/bench_guard.py [--repeats N] [--forges N] [--json]

1. detection: an EL1 payload masks every interrupt, forges VBAR_EL1 and polls it until the
   guard has restored it (the EL2 timer is the only way in): the window EL1 ran with the forged
   value (forge to the trampoline's interrupt entry; bounded by the interval) and the time
   until it reads the restored value (adds the Python round trip, during which EL1 waits);
2. cost: the testbed's hackbench and kernbench under `hardened` with and without the guard
   (Quirks.unguarded_el1_regs), guest seconds and their ratio; the guard's counters
   (interrupts through EL2, timer ticks, IPIs, mean time in the EL2 interrupt path);
3. Debian: boot to power-off at -smp 2 under the NullHypervisor with and without the guard.

The host is shared and TCG timing is noisy: compare ratios within one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from secvma import fixtures as fx
from secvma.kpcore.core import KPCore
from secvma.kpcore.modkeys import testbed_module_keys
from secvma.kpcore.policy import policy_named, with_quirks
from secvma.machine import layout
from secvma.machine.build import assemble_payload
from secvma.machine.initramfs import INIT_BANNER, build_initramfs
from secvma.machine.mailbox import GuardStats, MailboxCpu
from secvma.machine.null import NullHypervisor
from secvma.machine.qemu import MachineConfig
from secvma.machine.runner import boot
from secvma.platform import Event, GuardTrip, Hvc, Platform, SysReg, Vcpu
from secvma.testbed.commands import Command, Op, run_commands

INTERVAL_US = 10_000

FORGE_LOOP = """
    .text
    .globl _start
_start:
    mrs x19, vbar_el1
    mov x0, x19
    hvc #1                      // pin VBAR_EL1 to its value
    msr daifset, #0xf           // nothing reaches EL1 any more
    ldr x20, ={n}
1:  mrs x21, cntpct_el0
    add x1, x19, #0x80
    msr vbar_el1, x1            // forge
    isb
2:  mrs x2, vbar_el1            // poll until EL2 put it back
    cmp x2, x19
    b.ne 2b
    mrs x22, cntpct_el0
    sub x0, x22, x21
    hvc #2                      // report the latency (ticks)
    and x3, x22, #0xff          // a little jitter before the next forge
    lsl x3, x3, #8
3:  subs x3, x3, #1
    b.hs 3b
    subs x20, x20, #1
    b.ne 1b
    ldr x0, =0x84000008
    smc #0
4:  b 4b
    .ltorg
"""


class Restorer(NullHypervisor):
    """Arms the guard, pins VBAR_EL1 on request (hvc #1), restores it on every trip."""

    def __init__(self) -> None:
        super().__init__(guard_us=INTERVAL_US)
        self.latencies: list[int] = []
        self.windows: list[int] = []
        self.trips = 0

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        if isinstance(event, GuardTrip):
            self.trips += 1
            assert isinstance(cpu, MailboxCpu)
            # EL1 ran with the forged value from the MSR (x21 = CNTPCT just before it) until
            # the trampoline's interrupt entry (MB_TENT); after that it waits for this answer
            self.windows.append(cpu.counter(layout.MB_TENT) - cpu.x(21))
            cpu.write_sysreg(event.reg, event.pinned)
            return
        if isinstance(event, Hvc) and event.imm == 1:
            cpu.pin_sysreg(SysReg.VBAR_EL1, event.x[0])
        elif isinstance(event, Hvc) and event.imm == 2:
            self.latencies.append(event.x[0])
        super().handle(platform, cpu, event)


def detection(forges: int) -> dict[str, float]:
    """Forge VBAR_EL1 `forges` times with EL1 interrupts masked; latency until restored."""
    b = assemble_payload(FORGE_LOOP.format(n=forges), name="bench-guard")
    h = Restorer()
    res = boot(MachineConfig(kernel=b.path, timeout_s=60 + forges * 0.1), h)
    us = [t * 1e6 / res.cntfrq for t in h.latencies]
    win = [t * 1e6 / res.cntfrq for t in h.windows]
    return {"forges": len(us), "trips": h.trips, "bound_us": INTERVAL_US,
            "forged_window_us_mean": statistics.mean(win), "forged_window_us_max": max(win),
            "restored_after_us_mean": statistics.mean(us), "restored_after_us_max": max(us)}


def _guard_json(g: GuardStats | None, seconds: float) -> dict[str, float] | None:
    if g is None:
        return None
    return {"irqs_per_s": g.irqs / seconds, "ticks_per_s": g.ticks / seconds,
            "sgis_per_s": g.sgis / seconds, "irq_path_us": g.irq_path_us, "trips": g.trips,
            "lr_overflow": g.lr_overflow, "fgt": g.fgt}


def workloads(repeats: int) -> dict[str, object]:
    """hackbench + kernbench under hardened, guard off vs on (guest seconds)."""
    keys = testbed_module_keys()
    out: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    guard: list[dict[str, float] | None] = []
    for _ in range(repeats):
        for mode in ("off", "on"):
            pol = policy_named("hardened")
            if mode == "off":
                pol = with_quirks(pol, unguarded_el1_regs=True)
            hv = KPCore(pol, keys)
            run = run_commands(hv, [Command(Op.WORKLOAD, name=n) for n in ("hackbench", "kernbench")],
                               timeout_s=300)
            if hv.refusals or not all(r.ok for r in run.results):
                raise SystemExit(f"guard {mode}: workloads failed or refused: {hv.refusals[:3]}")
            for n, r in zip(("hackbench", "kernbench"), run.results, strict=True):
                out[mode].setdefault(n, []).append(r.guest_s)
            if mode == "on":
                guard.append(_guard_json(run.run.guard, run.run.wall_s))
    med = {m: {n: statistics.median(v) for n, v in d.items()} for m, d in out.items()}
    ratio = {n: med["on"][n] / med["off"][n] for n in med["on"]}
    return {"guest_s": med, "ratio_on_off": ratio, "guard": guard[-1]}


def debian(repeats: int) -> dict[str, object]:
    """Debian -smp 2 to power-off under the NullHypervisor, guard off vs on (wall seconds)."""
    d = fx.fetch()
    initrd = build_initramfs()
    walls: dict[str, list[float]] = {"off": [], "on": []}
    guard = None
    for _ in range(repeats):
        for mode in ("off", "on"):
            hyp = NullHypervisor(guard_us=INTERVAL_US if mode == "on" else None)
            res = boot(MachineConfig(kernel=d.kernel_image, initrd=initrd, ncpus=2, timeout_s=180), hyp,
                       watch=(INIT_BANNER,))
            if res.exit != "poweroff" or INIT_BANNER.decode() not in res.first_seen:
                raise SystemExit(f"Debian did not reach userspace (guard {mode}): {res.reason}")
            walls[mode].append(res.wall_s)
            if mode == "on":
                guard = _guard_json(res.guard, res.wall_s)
    med = {m: statistics.median(v) for m, v in walls.items()}
    return {"wall_s": med, "ratio_on_off": med["on"] / med["off"], "guard": guard}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--forges", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    report = {"interval_us": INTERVAL_US, "mailbox_guard_max": layout.GUARD_MAX,
              "detection": detection(a.forges), "testbed": workloads(a.repeats),
              "debian_smp2": debian(a.repeats)}
    if a.json:
        print(json.dumps(report, indent=2))
        return 0
    det = report["detection"]
    print(f"guard interval {INTERVAL_US} us")
    print(f"detection (EL1 masked, forged VBAR): {det['forges']} forges; EL1 ran with it "
          f"{det['forged_window_us_mean']:.0f} us mean, {det['forged_window_us_max']:.0f} us max "
          f"(bound {INTERVAL_US} us); restored after {det['restored_after_us_mean']:.0f} us mean")
    tb = report["testbed"]
    assert isinstance(tb, dict)
    for n, r in tb["ratio_on_off"].items():
        print(f"testbed {n}: guard off {tb['guest_s']['off'][n]:.3f} s, on {tb['guest_s']['on'][n]:.3f} s, "
              f"ratio {r:.2f}")
    print(f"testbed guard counters: {tb['guard']}")
    db = report["debian_smp2"]
    assert isinstance(db, dict)
    print(f"Debian -smp 2 boot: off {db['wall_s']['off']:.2f} s, on {db['wall_s']['on']:.2f} s, "
          f"ratio {db['ratio_on_off']:.2f}; guard counters: {db['guard']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
