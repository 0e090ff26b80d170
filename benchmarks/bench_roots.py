#!/usr/bin/env python3
"""The trampoline's root fast path (issue 14 item 1), measured in one run.

Usage: python3 benchmarks/bench_roots.py [--n N] [--workloads forkexec,pipe] [--json]

1. micro: an EL1 payload writes TTBR0_EL1 N times with a root in the machine's allowed table
   (done at EL2), N/5 times with one that is not (each a round trip to Python, which
   performs it), and CONTEXTIDR_EL1 N times through the older ISS-keyed fast path (the cost
   of the trap itself, without the root lookup); guest-measured µs per write (CNTVCT),
   median of 5 batches;
2. Debian /init's fork + sched_yield loop (SECVMA_YIELDS) under the NullHypervisor,
   `transparent` with every TTBR write trapping (before) and with the root fast path (after):
   ns per context switch as the guest measures it, traps by class, trapped MSRs by register;
3. Debian: `run --guest linux` workloads under `none`, `transparent` with every TTBR write
   trapping (before) and `transparent` with the root fast path (after): workload seconds as the
   guest measures them, trap counts by class, trapped MSRs by register, fast-path answers.

The host is shared and TCG timing is noisy: compare ratios and trap counts within one run.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys

from secvma import fixtures
from secvma.kpcore.transparent import TransparentKPCore
from secvma.linux.session import run_linux_workloads
from secvma.machine.build import assemble_payload
from secvma.machine.initramfs import INIT_BANNER, build_initramfs
from secvma.machine.null import NullHypervisor
from secvma.machine.qemu import MachineConfig
from secvma.machine.runner import boot
from secvma.platform import CpuStart, Event, Hvc, Platform, SysReg, Vcpu

LISTED = 0x4123_4000
UNLISTED = 0x4177_7000
BATCHES = 5

LOOP = """
    .text
    .globl _start
_start:
    mov x20, #{batches}
0:  ldr x5, ={listed:#x}
    ldr x4, ={n}
    isb
    mrs x10, cntvct_el0
1:  msr ttbr0_el1, x5
    subs x4, x4, #1
    b.ne 1b
    isb
    mrs x11, cntvct_el0
    ldr x5, ={unlisted:#x}
    ldr x4, ={m}
    isb
    mrs x12, cntvct_el0
2:  msr ttbr0_el1, x5
    subs x4, x4, #1
    b.ne 2b
    isb
    mrs x13, cntvct_el0
    ldr x4, ={n}
    isb
    mrs x14, cntvct_el0
3:  msr contextidr_el1, x4
    subs x4, x4, #1
    b.ne 3b
    isb
    mrs x15, cntvct_el0
    sub x0, x11, x10
    sub x1, x13, x12
    sub x2, x15, x14
    hvc #0xAA
    subs x20, x20, #1
    b.ne 0b
    ldr x0, =0x84000008
    smc #0
9:  b 9b
    .ltorg
"""


class Timer(NullHypervisor):
    """Lists LISTED for TTBR0 at CPU start; collects (fast ticks, slow ticks) per batch."""

    def __init__(self) -> None:
        super().__init__(trap_sysregs=True)
        self.batches: list[tuple[int, int, int]] = []

    def handle(self, platform: Platform, cpu: Vcpu, event: Event) -> None:
        if isinstance(event, CpuStart):
            platform.set_allowed_roots(SysReg.TTBR0_EL1, [LISTED])
            cpu.enable_root_fast_path(frozenset({SysReg.TTBR0_EL1}))
            fast = getattr(cpu, "set_fast_path", None)  # the ISS-keyed table (MailboxCpu)
            if fast is not None:
                fast([SysReg.CONTEXTIDR_EL1])
        if isinstance(event, Hvc) and event.imm == 0xAA:
            self.batches.append((event.x[0], event.x[1], event.x[2]))
            cpu.set_x(0, 0)
            return
        super().handle(platform, cpu, event)


def micro(n: int) -> dict[str, object]:
    m = max(1, n // 5)
    b = assemble_payload(LOOP.format(batches=BATCHES, listed=LISTED, unlisted=UNLISTED, n=n, m=m),
                         name="bench-roots")
    h = Timer()
    res = boot(MachineConfig(kernel=b.path, timeout_s=120 + m * BATCHES * 0.01), h)
    if res.exit != "poweroff" or len(h.batches) != BATCHES:
        raise SystemExit(f"micro payload failed: {res.exit} {res.reason}")
    f = res.cntfrq or 62_500_000
    fast = statistics.median(t * 1e6 / f / n for t, _, _ in h.batches)
    slow = statistics.median(t * 1e6 / f / m for _, t, _ in h.batches)
    other = statistics.median(t * 1e6 / f / n for _, _, t in h.batches)
    return {"writes_fast": n, "writes_python": m, "batches": BATCHES,
            "fast_path_us": round(fast, 3), "python_us": round(slow, 3),
            "contextidr_fast_path_us": round(other, 3),  # same trap, ISS table, no root lookup
            "speedup": round(slow / fast, 1) if fast else None,
            "fast_answers": res.fast_root_traps, "python_traps": res.traps.get("SysregTrap", 0)}


def yields(n: int) -> dict[str, object]:
    """Debian's /init forks and yields n times (SECVMA_YIELDS): every yield a context switch,
    every return to EL0 two TTBR1 writes (KPTI)."""
    fx = fixtures.fetch()
    image = fx.kernel_image.read_bytes()
    out: dict[str, object] = {}
    for label, hv in (("none", NullHypervisor()),
                      ("transparent_before", TransparentKPCore(image=image, root_fast_path=False)),
                      ("transparent_after", TransparentKPCore(image=image))):
        res = boot(MachineConfig(kernel=fx.kernel_image, initrd=build_initramfs(), ncpus=1,
                                 timeout_s=600,
                                 append=f"console=ttyAMA0 panic=-1 SECVMA_YIELDS={n}"),
                   hv, watch=(INIT_BANNER,))
        m = re.search(r"sched_yield ns/switch (\d+)", res.console)
        refused = len(hv.refusals) if isinstance(hv, TransparentKPCore) else 0
        stats = hv.stats if isinstance(hv, TransparentKPCore) else {}
        out[label] = {"ok": res.exit == "poweroff" and m is not None and not refused,
                      "wall_s": round(res.wall_s, 2), "ns_per_switch": int(m.group(1)) if m else None,
                      "traps": dict(res.traps), "refusals": refused,
                      "sysreg_traps": {k[4:]: v for k, v in sorted(stats.items()) if k.startswith("msr.")},
                      "fast_traps": {"total": res.fast_traps, "roots": res.fast_root_traps}}
        print(f"yields {label}: {out[label]}", file=sys.stderr)
    base = out["none"]
    assert isinstance(base, dict)
    for label in ("transparent_before", "transparent_after"):
        row = out[label]
        assert isinstance(row, dict)
        if row["ns_per_switch"] and base["ns_per_switch"]:
            row["ratio_to_none"] = round(row["ns_per_switch"] / base["ns_per_switch"], 2)
    return out


def debian(workloads: tuple[str, ...]) -> dict[str, object]:
    out: dict[str, object] = {}
    for label, policy, fast in (("none", "none", True), ("transparent_before", "transparent", False),
                                ("transparent_after", "transparent", True)):
        r = run_linux_workloads(policy, workloads=workloads, root_fast_path=fast, timeout_s=300)
        out[label] = {"ok": r.ok, "wall_s": round(r.wall_s, 2), "refusals": len(r.refusals),
                      "workloads_s": {n: w.seconds for n, w in r.workloads.items()},
                      "traps": r.traps, "sysreg_traps": r.sysreg_traps, "fast_traps": r.fast_traps}
        print(f"{label}: ok={r.ok} wall {r.wall_s:.1f} s", file=sys.stderr)
    none = out["none"]
    assert isinstance(none, dict)
    for label in ("transparent_before", "transparent_after"):
        row = out[label]
        assert isinstance(row, dict)
        row["ratio_to_none"] = {n: (round(s / none["workloads_s"][n], 2)
                                    if s and none["workloads_s"].get(n) else None)
                                for n, s in row["workloads_s"].items()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="fast-path writes per batch")
    ap.add_argument("--workloads", default="forkexec,pipe")
    ap.add_argument("--yields", type=int, default=500, help="Debian /init yields (0: skip)")
    ap.add_argument("--no-debian", action="store_true", help="skip the `run --guest linux` part")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    result: dict[str, object] = {"micro": micro(a.n)}
    print(f"micro: {result['micro']}", file=sys.stderr)
    if a.yields:
        result["yields"] = yields(a.yields)
    if not a.no_debian:
        result["debian"] = debian(tuple(a.workloads.split(",")))
    print(json.dumps(result, indent=None if a.json else 2))
    bad = [k for part in ("yields", "debian")
           for k, v in dict(result.get(part, {})).items()  # type: ignore[call-overload]
           if not v["ok"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
